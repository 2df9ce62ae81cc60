"""The rule JSON Schema: valid Draft 2020-12, fully described, and the checked-in file up to date."""
import json
from pathlib import Path

from jsonschema import Draft202012Validator

from engine import rule_schema

RULES = Path(__file__).parents[2] / "rules"

SCHEMA_FILE = Path(__file__).parents[2] / "schemas" / "rule.schema.json"


def test_schema_is_valid_draft_2020_12_with_an_id():
    schema = rule_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema" and schema["$id"]


def _undescribed(node, path="#"):
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            if "description" not in sub:
                yield f"{path}/properties/{name}"
        for name, sub in node.get("$defs", {}).items():
            if "description" not in sub:
                yield f"{path}/$defs/{name}"
        for key, sub in node.items():
            yield from _undescribed(sub, f"{path}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _undescribed(sub, f"{path}/{i}")


def test_every_field_has_a_description():
    assert list(_undescribed(rule_schema())) == []


def test_checked_in_file_matches_the_registries():
    # Regenerate with: flask rules schema > schemas/rule.schema.json
    assert json.loads(SCHEMA_FILE.read_text()) == rule_schema()


def test_example_rules_are_valid_against_the_file():
    from engine.documents import parse_documents
    validator = Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    for path in sorted(RULES.glob("*.yaml")):
        for doc in parse_documents(path.read_text(), str(path)):
            assert list(validator.iter_errors(doc.data)) == [], path
