"""`$filter` compiled to a parameterised SQL condition over a set's columns.

odata-query parses the text into an AST; this module walks it and emits SQL in which every literal
is a `?` parameter (so no value can inject SQL) and every identifier is checked against the set's
columns. Literals are converted to the stored form of the column they are compared with (GUIDs
lowercased, date-times to UTC milliseconds, booleans to 0/1), so comparisons run in SQL on indexes.
Supported: eq ne gt ge lt le in, and or not, parentheses, contains startswith endswith, tolower
toupper trim length, bare boolean properties, and null. A condition may be compared with a boolean
(`contains(Name,'a') eq true`, allowed since OData 4.01 and what SAP's client always writes), with
OData's null rules: a function of a null property is null, and `null eq false` is false while
`null ne true` is true, which SQLite's `=` and `IS NOT` give as they stand.
A filter may nest MAX_DEPTH levels: the compiler recurses, and so does SQLite's parser.
"""
from __future__ import annotations

import dataclasses

from odata_query import ast
from odata_query.exceptions import ODataException
from odata_query.grammar import ODataLexer, ODataParser

from . import edm
from .errors import BadRequest
from .store import quote

_COMPARE = {ast.Eq: "=", ast.NotEq: "IS NOT", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_NUMBERS = {"Edm.Int16", "Edm.Int32", "Edm.Int64", "Edm.Byte", "Edm.Double", "Edm.Single", "Edm.Decimal"}
_STRING_FUNCTIONS = {"tolower": "lower", "toupper": "upper", "trim": "trim"}
_TEXT_MATCHES = ("contains", "startswith", "endswith")
_SQL_INTEGERS = range(-2**63, 2**63)  # what SQLite can bind
_HINTS = {"Edm.Guid": ": write the GUID unquoted, e.g. 3fa85f64-5717-4562-b3fc-2c963f66afa6",
          "Edm.DateTimeOffset": ": write the date-time unquoted with its offset, e.g. 2025-04-01T09:00:00Z"}
MAX_DEPTH = 100  # far deeper than filters people write (use `in (…)` for long lists of values)


def compile_filter(text: str, columns: dict[str, str]) -> tuple[str, list]:
    """SQL condition and parameters for `$filter=text`; raises BadRequest naming the problem."""
    try:
        tree = ODataParser().parse(ODataLexer().tokenize(text))
    except (ODataException, ValueError, TypeError, IndexError) as exc:
        raise BadRequest(f"Malformed $filter '{text}': {exc}", target="$filter") from None
    if tree is None:
        raise BadRequest(f"Malformed $filter '{text}': empty expression", target="$filter")
    if _deeper_than_allowed(tree):
        raise BadRequest(f"$filter nests deeper than {MAX_DEPTH} levels (for a long list of values, "
                         f"write 'Property in (…)' rather than a chain of 'or')", target="$filter")
    compiler = _Compiler(columns)
    parts = [compiler.condition(node) for node in _conjuncts(tree)]
    # Filters here are mostly selective (polls on *_UpdatedAt, foreign keys). Telling SQLite so makes
    # it search the filter's index and sort the few hits, instead of walking the whole key order.
    return " AND ".join(f"unlikely({sql})" for sql, _ in parts), [p for _, params in parts for p in params]


def _deeper_than_allowed(tree) -> bool:
    """Whether the AST nests past MAX_DEPTH, found without recursing (3,000 `not`s would overflow)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        for field in dataclasses.fields(node):
            value = getattr(node, field.name)
            children = value if isinstance(value, (list, tuple)) else (value,)
            stack.extend((child, depth + 1) for child in children if isinstance(child, ast._Node))
    return False


def _conjuncts(node) -> list:
    """The top-level AND terms of a filter (each may use its own index)."""
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


class _Compiler:
    """Walks one filter AST; `columns` maps property name → EDM type."""

    def __init__(self, columns: dict[str, str]):
        self.columns = columns

    def condition(self, node) -> tuple[str, list]:
        """SQL for a node used as a truth value."""
        if isinstance(node, ast.BoolOp):
            left, right = self.condition(node.left), self.condition(node.right)
            op = "AND" if isinstance(node.op, ast.And) else "OR"
            return f"({left[0]} {op} {right[0]})", left[1] + right[1]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            sql, params = self.condition(node.operand)
            return f"(NOT {sql})", params
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call) and node.func.name in _TEXT_MATCHES:
            return self.text_match(node)
        if isinstance(node, ast.Identifier) and self.column_type(node) == "Edm.Boolean":
            return f"({quote(node.name)} = 1)", []
        if isinstance(node, ast.Boolean):
            return ("1" if node.val.lower() == "true" else "0"), []
        raise BadRequest(f"$filter: {_describe(node)} is not a condition", target="$filter")

    def compare(self, node: ast.Compare) -> tuple[str, list]:
        if isinstance(node.comparator, ast.In):
            return self.member_of(node)
        left_type, right_type = self.type_of(node.left), self.type_of(node.right)
        left_sql, left_params = self.operand(node.left, right_type, _name(node.right))
        right_sql, right_params = self.operand(node.right, left_type, _name(node.left))
        op = _COMPARE[type(node.comparator)]
        if isinstance(node.right, ast.Null) or isinstance(node.left, ast.Null):
            op = {"=": "IS", "IS NOT": "IS NOT"}.get(op, op)
        return f"({left_sql} {op} {right_sql})", left_params + right_params

    def member_of(self, node: ast.Compare) -> tuple[str, list]:
        column_type = self.type_of(node.left)
        left_sql, params = self.operand(node.left, None)
        items = node.right.val if isinstance(node.right, ast.List) else [node.right]
        values = [self.literal(item, column_type, _name(node.left)) for item in items]
        return f"({left_sql} IN ({', '.join('?' for _ in values)}))", params + values

    def text_match(self, node: ast.Call) -> tuple[str, list]:
        name = node.func.name
        if len(node.args) != 2:
            raise BadRequest(f"$filter: {name}() takes two arguments", target="$filter")
        subject, subject_params = self.operand(node.args[0], "Edm.String")
        needle, needle_params = self.operand(node.args[1], "Edm.String")
        params = subject_params + needle_params
        if name == "contains":
            return f"(instr({subject}, {needle}) > 0)", params
        if name == "startswith":
            return f"(substr({subject}, 1, length({needle})) = {needle})", params + needle_params
        # substr(x, -0) would be the whole string, so an empty suffix is matched explicitly.
        return (f"(length({needle}) = 0 OR substr({subject}, -length({needle})) = {needle})",
                needle_params + subject_params + needle_params + needle_params)

    def operand(self, node, other_type: str | None, other_name: str = "") -> tuple[str, list]:
        """SQL for a value: a column, a function of one, a condition (0, 1 or NULL) or a literal as `?`."""
        if _is_condition(node):
            return self.condition(node)
        if isinstance(node, ast.Identifier):
            self.column_type(node)
            return quote(node.name), []
        if isinstance(node, ast.Call) and node.func.name in _STRING_FUNCTIONS:
            inner, params = self.operand(node.args[0], "Edm.String") if len(node.args) == 1 else self._arity(node)
            return f"{_STRING_FUNCTIONS[node.func.name]}({inner})", params
        if isinstance(node, ast.Call) and node.func.name == "length":
            inner, params = self.operand(node.args[0], "Edm.String") if len(node.args) == 1 else self._arity(node)
            return f"length({inner})", params
        if isinstance(node, ast.Null):
            return "NULL", []
        if isinstance(node, ast._Literal):
            return "?", [self.literal(node, other_type, other_name)]
        raise BadRequest(f"$filter: {_describe(node)} is not supported here", target="$filter")

    def type_of(self, node) -> str | None:
        if _is_condition(node):
            return "Edm.Boolean"
        if isinstance(node, ast.Identifier):
            return self.column_type(node)
        if isinstance(node, ast.Call) and node.func.name in _STRING_FUNCTIONS:
            return "Edm.String"
        if isinstance(node, ast.Call) and node.func.name == "length":
            return "Edm.Int32"
        return None

    def column_type(self, node: ast.Identifier) -> str:
        if node.namespace or node.name not in self.columns:
            raise BadRequest(f"$filter: unknown property '{node.full_name()}'", target=node.full_name())
        return self.columns[node.name]

    def literal(self, node, column_type: str | None, name: str = ""):
        """A literal converted to how `column_type` is stored; raises BadRequest on a mismatch."""
        try:
            return _convert_literal(node, column_type)
        except (ValueError, TypeError, OverflowError):
            raise BadRequest(
                f"$filter: {_describe(node)} cannot be compared with {name or 'a value'} ({column_type})"
                + _HINTS.get(column_type, ""), target=name or "$filter") from None

    def _arity(self, node):
        raise BadRequest(f"$filter: {node.func.name}() takes one argument", target="$filter")


def _convert_literal(node, column_type: str | None):
    if isinstance(node, ast.Null):
        return None
    if column_type in (None, "Edm.String") and isinstance(node, ast.String):
        return node.val
    if column_type is None and isinstance(node, (ast.Integer, ast.Float)):
        return _sql_number(node.py_val)
    # GUIDs and date-times are bare literals: InLoox's ASP.NET OData refuses a quoted one
    # ('Edm.Guid' vs 'Edm.String': incompatible types), and a date-time without an offset names no instant.
    if column_type == "Edm.Guid" and isinstance(node, ast.GUID):
        return edm.normalize_guid(node.val)
    if column_type == "Edm.DateTimeOffset" and isinstance(node, ast.DateTime) and _has_offset(node.val):
        return edm.normalize_datetime(node.val)
    if column_type == "Edm.DateTimeOffset" and isinstance(node, ast.Date):
        return edm.normalize_datetime(node.val)
    if column_type == "Edm.Boolean" and isinstance(node, ast.Boolean):
        return int(node.val.lower() == "true")
    if column_type in _NUMBERS and isinstance(node, (ast.Integer, ast.Float)):
        return _sql_number(node.py_val)
    raise TypeError(node)


def _has_offset(text: str) -> bool:
    """Whether an ISO date-time literal ends in `Z` or a `+hh:mm`/`-hh:mm` offset."""
    return text[-1:] in ("Z", "z") or (len(text) > 6 and text[-6] in "+-" and text[-3] == ":")


def _sql_number(value):
    if isinstance(value, int) and value not in _SQL_INTEGERS:
        raise OverflowError(value)  # no stored number is that large, and SQLite cannot bind it
    return value


def _is_condition(node) -> bool:
    """Whether `node` is true or false (or null) rather than a value: a comparison, a boolean
    operator or a text match."""
    if isinstance(node, (ast.BoolOp, ast.Compare)):
        return True
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.Not)
    return isinstance(node, ast.Call) and node.func.name in _TEXT_MATCHES


def _name(node) -> str:
    return node.name if isinstance(node, ast.Identifier) else ""


def _describe(node) -> str:
    if isinstance(node, ast.String):
        return f"'{node.val}'"
    if isinstance(node, ast._Literal):
        return f"{type(node).__name__.lower()} literal {getattr(node, 'val', '')}".strip()
    if isinstance(node, ast.Call):
        return f"function {node.func.name}()"
    return type(node).__name__
