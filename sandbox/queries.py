"""Collection reads: `$filter $select $orderby $top $skip $count` as one SQL query, 100 rows a page.

Pages are cut in SQL (LIMIT/OFFSET, or a key-ordered `$skiptoken` when no `$orderby` is given, so
walking 100,000 rows never rescans from the start) and never load more than a page into Python.
A longer result carries `@odata.nextLink`: the same query with the position encoded.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote as url_quote, urlencode

from . import edm
from .errors import BadRequest
from .filters import compile_filter
from .store import Store, quote

PAGE_SIZE = 100
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
    if not text.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer, got '{text}'", target=name)
    return int(text)


def read_page(store: Store, set_name: str, query: Query) -> tuple[list[dict], dict | None, int | None]:
    """One page of rows, the arguments for the next page (or None) and the total if `$count=true`."""
    key = store.metadata.entity_sets[set_name].key
    keyset = not query.order and len(key) == 1
    where, params = _conditions(query, key[0] if keyset else None)
    limit = PAGE_SIZE if query.top is None else min(PAGE_SIZE, query.top)
    order = [f"{quote(c)} {'DESC' if d else 'ASC'}" for c, d in query.order] + [quote(k) for k in key]
    offset = 0 if query.skiptoken is not None else query.skip
    sql = (f"SELECT {', '.join(quote(c) for c in query.select)} FROM {quote(set_name)}{where}"
           f" ORDER BY {', '.join(order)} LIMIT ? OFFSET ?")
    with store.reading() as conn:
        rows = conn.execute(sql, [*params, limit + 1, offset]).fetchall()
        total = count_rows(conn, set_name, query) if query.count else None
    more = len(rows) > limit and (query.top is None or query.top > limit)
    entities = to_entities(store, set_name, query.select, rows[:limit])
    if not more:
        return entities, None, total
    return entities, _next_position(query, rows[limit - 1], key[0] if keyset else None, limit), total


def _conditions(query: Query, keyset_column: str | None) -> tuple[str, list]:
    clauses, params = [], list(query.params)
    if query.where:
        clauses.append(query.where)
    if keyset_column and query.skiptoken is not None:
        clauses.append(f"{quote(keyset_column)} > ?")
        params.append(query.skiptoken)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _next_position(query: Query, last_row, keyset_column: str | None, returned: int) -> dict:
    position = {"$top": None if query.top is None else str(query.top - returned)}
    if keyset_column:
        if keyset_column not in query.select:
            return {**position, "$skip": str(query.skip + returned), "$skiptoken": None}
        position["$skiptoken"] = str(last_row[query.select.index(keyset_column)])
        position["$skip"] = None
    else:
        position["$skip"] = str(query.skip + returned)
    return position


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
