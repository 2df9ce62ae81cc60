"""Collection reads: `$filter $select $orderby $top $skip $count` as one SQL query, 100 rows a page.

Pages are cut in SQL and never load more than a page into Python. When the order is the key, or
one column plus the key, the next page starts after a `$skiptoken` (the last row's order values)
instead of an OFFSET, so walking 100,000 rows never rescans from the start; other orders use $skip.
A longer result carries `@odata.nextLink`: the same query with the position encoded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote as url_quote, urlencode

from . import bodies, edm
from .errors import BadRequest
from .filters import compile_filter
from .store import Store, quote

PAGE_SIZE = 100
_MAX_DIGITS = 18  # any $top/$skip of this many digits fits SQLite's 64-bit integers
_OPTIONS = {"$filter", "$select", "$orderby", "$top", "$skip", "$skiptoken", "$count", "$format"}


@dataclass(frozen=True)
class Query:
    """The query options of one collection request, checked against the set's columns."""

    where: str = ""
    params: tuple = ()
    select: tuple[str, ...] = ()
    order: tuple[tuple[str, bool], ...] = ()  # (column, descending)
    top: int | None = None
    skip: int = 0
    skiptoken: str | None = None
    count: bool = False


def parse_query(args, columns: dict[str, str]) -> Query:
    """A Query from request arguments; raises BadRequest for unknown options, columns or numbers."""
    for name in args:
        if name.startswith("$") and name not in _OPTIONS:
            raise BadRequest(f"Query option '{name}' is not supported", target=name)
    where, params = ("", [])
    if args.get("$filter", "").strip():
        where, params = compile_filter(args["$filter"], columns)
    return Query(
        where=where, params=tuple(params),
        select=_select(args.get("$select", ""), columns),
        order=_order(args.get("$orderby", ""), columns),
        top=_count_option(args, "$top"), skip=_count_option(args, "$skip") or 0,
        skiptoken=args.get("$skiptoken"), count=args.get("$count", "").lower() == "true",
    )


def _select(text: str, columns: dict[str, str]) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names == ("*",) or not names:
        return tuple(columns)
    for name in names:
        if name not in columns:
            raise BadRequest(f"$select: unknown property '{name}'", target=name)
    return names


def _order(text: str, columns: dict[str, str]) -> tuple[tuple[str, bool], ...]:
    order = []
    for item in (i.strip() for i in text.split(",") if i.strip()):
        parts = item.split()
        if len(parts) > 2 or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc")):
            raise BadRequest(f"$orderby: cannot read '{item}' (want 'Property [asc|desc]')", target="$orderby")
        if parts[0] not in columns:
            raise BadRequest(f"$orderby: unknown property '{parts[0]}'", target=parts[0])
        order.append((parts[0], len(parts) == 2 and parts[1].lower() == "desc"))
    return tuple(order)


def _count_option(args, name: str) -> int | None:
    text = args.get(name)
    if text is None:
        return None
    # isdigit() alone takes '²' and other digits int() refuses.
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_DIGITS:
        raise BadRequest(f"{name} must be a non-negative integer of at most {_MAX_DIGITS} digits,"
                         f" got '{text[:40]}'", target=name)
    return int(text)


def read_page(store: Store, set_name: str, query: Query, *, keyset_allowed: bool = True
              ) -> tuple[list[dict], dict | None, int | None]:
    """One page of rows, the arguments for the next page (or None) and the total if `$count=true`.

    `keyset_allowed=False` pages every order by $skip, as a server that knows no other way."""
    order = _full_order(query, store.metadata.entity_sets[set_name].key)
    keyset = keyset_allowed and len(order) <= 2 and len({d for _, d in order}) == 1 and (
        len(order) == 1 or not query.order[1:])
    where, params = _conditions(query, order if keyset else None)
    limit = PAGE_SIZE if query.top is None else min(PAGE_SIZE, query.top)
    extra = [c for c, _ in order if c not in query.select]  # fetched for the next $skiptoken only
    sql = (f"SELECT {', '.join(quote(c) for c in (*query.select, *extra))} FROM {quote(set_name)}{where}"
           f" ORDER BY {', '.join(quote(c) + (' DESC' if d else '') for c, d in order)} LIMIT ? OFFSET ?")
    with store.reading() as conn:
        rows = conn.execute(sql, [*params, limit + 1, query.skip]).fetchall()
        total = count_rows(conn, set_name, query) if query.count else None
    entities = to_entities(store, set_name, query.select, [row[:len(query.select)] for row in rows[:limit]])
    if len(rows) <= limit or (query.top is not None and query.top <= limit):
        return entities, None, total
    position = {"$top": None if query.top is None else str(query.top - limit)}
    if keyset:
        columns = (*query.select, *extra)
        token = [rows[limit - 1][columns.index(c)] for c, _ in order]
        return entities, {**position, "$skiptoken": json.dumps(token), "$skip": None}, total
    return entities, {**position, "$skip": str(query.skip + limit)}, total


def _full_order(query: Query, key: tuple[str, ...]) -> list[tuple[str, bool]]:
    """The user's order plus the key as tie-breaker (in the same direction when one column is sorted)."""
    direction = len(query.order) == 1 and query.order[0][1]
    order = list(query.order)
    return order + [(k, direction) for k in key if k not in {c for c, _ in order}]


def _conditions(query: Query, keyset: list[tuple[str, bool]] | None) -> tuple[str, list]:
    clauses, params = [], list(query.params)
    if query.where:
        clauses.append(query.where)
    if keyset and query.skiptoken is not None:
        clause, values = _after_token(keyset, query.skiptoken)
        clauses.append(clause)
        params += values
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _after_token(order: list[tuple[str, bool]], token_text: str) -> tuple[str, list]:
    """The condition "comes after the row the token names" for an order of (column, key) or (key)."""
    try:
        token = bodies.parse_json(token_text, "$skiptoken")
    except BadRequest:
        token = None
    if not isinstance(token, list) or len(token) != len(order) or not all(map(_storable, token)):
        raise BadRequest(f"Malformed $skiptoken '{token_text[:80]}'; follow @odata.nextLink verbatim",
                         target="$skiptoken")
    descending = order[0][1]
    after = "<" if descending else ">"
    if len(order) == 1:
        return f"{quote(order[0][0])} {after} ?", token
    column, key = quote(order[0][0]), quote(order[1][0])
    value, last_key = token
    # SQLite sorts NULL first: ascending, NULL rows are already behind us; descending, still ahead.
    if value is None:
        if descending:
            return f"({column} IS NULL AND {key} < ?)", [last_key]
        return f"(({column} IS NULL AND {key} > ?) OR {column} IS NOT NULL)", [last_key]
    within = f"({column} {after}= ? AND ({column} {after} ? OR {key} {after} ?))"
    if descending:
        return f"({within} OR {column} IS NULL)", [value, value, last_key]
    return within, [value, value, last_key]


def _storable(value) -> bool:
    """Whether SQLite can compare a column with `value` (a token holds stored values only)."""
    if isinstance(value, int):
        return -2**63 <= value < 2**63
    return value is None or isinstance(value, (str, float))


def next_link(base: str, set_name: str, args, position: dict) -> str:
    """The absolute URL of the next page: the same arguments with `position` replacing the old one."""
    merged = {k: v for k, v in args.items() if k not in position}
    merged.update({k: v for k, v in position.items() if v is not None})
    return f"{base}{set_name}?" + urlencode(merged, quote_via=url_quote, safe="$'(),:")


def count_rows(conn, set_name: str, query: Query) -> int:
    """How many rows match the query's filter (ignoring paging)."""
    where = f" WHERE {query.where}" if query.where else ""
    return conn.execute(f"SELECT COUNT(*) FROM {quote(set_name)}{where}", query.params).fetchone()[0]


def to_entity(store: Store, set_name: str, columns, row) -> dict:
    """A stored row as the JSON object InLoox would return."""
    return to_entities(store, set_name, columns, [row])[0]


def to_entities(store: Store, set_name: str, columns, rows) -> list[dict]:
    """Stored rows as JSON objects (readers looked up once per page, not per value)."""
    types = store.columns(set_name)
    readers = [(name, edm.reader(types[name])) for name in columns]
    return [{name: value if read is None or value is None else read(value)
             for (name, read), value in zip(readers, row)} for row in rows]
