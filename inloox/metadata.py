"""InLoox's published schema ($metadata EDMX) as plain, typed values.

The sandbox serves every entity set from it, the client uses it to format keys, and the rule
validator checks entity sets and field names against it. `metadata.xml` beside this module is
InLoox 11's own `$metadata` document, copied verbatim from shared/inloox/.
"""
from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

METADATA_PATH = Path(__file__).with_name("metadata.xml")

_EDMX = "{http://docs.oasis-open.org/odata/ns/edmx}"
_EDM = "{http://docs.oasis-open.org/odata/ns/edm}"


@dataclass(frozen=True)
class Property:
    """One structural property: its EDM type name (e.g. `Edm.Guid`) and nullability."""

    name: str
    type: str
    nullable: bool

    @property
    def is_collection(self) -> bool:
        return self.type.startswith("Collection(")


@dataclass(frozen=True)
class EntitySet:
    """An entity set with its key (one or more property names) and properties by name."""

    name: str
    entity_type: str
    key: tuple[str, ...]
    properties: dict[str, Property] = field(hash=False)
    open_type: bool = False

    def property(self, name: str) -> Property | None:
        return self.properties.get(name)


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    nullable: bool


@dataclass(frozen=True)
class Operation:
    """A bound action (POST) or function (GET); `binding_sets` names the sets it binds to."""

    name: str
    kind: str  # "Action" or "Function"
    namespace: str
    binding_type: str
    binding_sets: tuple[str, ...]
    collection: bool
    parameters: tuple[Parameter, ...]
    return_type: str | None


@dataclass(frozen=True)
class Metadata:
    """The whole schema: entity sets by name and bound operations.

    Not the raw document: 185 KB in every process that reads the schema, for the sandbox's `$metadata`
    alone, which reads the file (issue 22)."""

    namespace: str
    entity_sets: dict[str, EntitySet]
    operations: tuple[Operation, ...]

    def entity_set(self, name: str) -> EntitySet | None:
        return self.entity_sets.get(name)

    def operation(self, entity_set: str, name: str, *, collection: bool = False) -> Operation | None:
        """The operation `name` bound to one entity (or, with collection=True, to the whole set)."""
        name = name.rsplit(".", 1)[-1]  # "Default.AddNote" and "AddNote" are the same operation
        for op in self.operations:
            if op.name == name and entity_set in op.binding_sets and op.collection == collection:
                return op
        return None


def _nullable(el: ET.Element) -> bool:
    return el.get("Nullable", "true").lower() != "false"


def _element_type(type_name: str) -> str:
    return type_name[len("Collection("):-1] if type_name.startswith("Collection(") else type_name


def parse_metadata(document: bytes) -> Metadata:
    """Parse an EDMX document; raises ValueError when it is not one."""
    root = ET.fromstring(document)
    if root.tag != _EDMX + "Edmx":
        raise ValueError("not an EDMX document (root element is %s)" % root.tag)
    entity_types: dict[str, ET.Element] = {}
    op_elements: list[tuple[str, ET.Element]] = []
    container = None
    namespace = ""
    for schema in root.iter(_EDM + "Schema"):
        ns = schema.get("Namespace", "")
        for et in schema.findall(_EDM + "EntityType"):
            entity_types[f"{ns}.{et.get('Name')}"] = et
            namespace = namespace or ns
        for kind in ("Action", "Function"):
            op_elements += [(ns, op) for op in schema.findall(_EDM + kind)]
        container = schema.find(_EDM + "EntityContainer") if container is None else container
    if container is None:
        raise ValueError("EDMX document has no EntityContainer")

    sets: dict[str, EntitySet] = {}
    sets_by_type: dict[str, list[str]] = {}
    for es in container.findall(_EDM + "EntitySet"):
        type_name = es.get("EntityType")
        et = entity_types[type_name]
        props = {
            p.get("Name"): Property(p.get("Name"), p.get("Type"), _nullable(p))
            for p in et.findall(_EDM + "Property")
        }
        key = tuple(r.get("Name") for r in et.findall(f"{_EDM}Key/{_EDM}PropertyRef"))
        open_type = et.get("OpenType", "false").lower() == "true"
        sets[es.get("Name")] = EntitySet(es.get("Name"), type_name, key, props, open_type)
        sets_by_type.setdefault(type_name, []).append(es.get("Name"))

    operations = []
    for ns, op in op_elements:
        params = op.findall(_EDM + "Parameter")
        if op.get("IsBound", "false").lower() != "true" or not params:
            continue  # InLoox has no unbound operations; nothing to route them to
        binding_type = params[0].get("Type")
        returns = op.find(_EDM + "ReturnType")
        operations.append(Operation(
            name=op.get("Name"),
            kind=op.tag[len(_EDM):],
            namespace=ns,
            binding_type=binding_type,
            binding_sets=tuple(sets_by_type.get(_element_type(binding_type), ())),
            collection=binding_type.startswith("Collection("),
            parameters=tuple(Parameter(p.get("Name"), p.get("Type"), _nullable(p)) for p in params[1:]),
            return_type=None if returns is None else returns.get("Type"),
        ))
    return Metadata(namespace, sets, tuple(operations))


@functools.lru_cache(maxsize=4)
def load_metadata(path: str | Path = METADATA_PATH) -> Metadata:
    """The schema from an EDMX file (by default InLoox 11's, shipped with this package)."""
    return parse_metadata(Path(path).read_bytes())
