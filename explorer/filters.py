"""Row filters written as short expressions, the same in the API, the page and `crawl2clip subset`:

    punsafe<0.1   pwatermark<=0.5   similarity>=0.3   WIDTH>=1024   LANGUAGE=en,de   split!=nolang

Numeric columns take <, <=, >, >=, =, != and one number; other columns take = or != and a
comma-separated list of values. Rows where the column is null never pass. Masks are computed with
Arrow on the memory-mapped metadata, so a filter over a million rows takes milliseconds.
"""

import math
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_FILTERS = 20
MAX_VALUES = 100
MAX_EXPRESSION_CHARS = 1000
_EXPRESSION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*$", re.DOTALL)
_NUMERIC_OPS = {"<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal,
                "=": pc.equal, "!=": pc.not_equal}


class FilterError(ValueError):
    """An expression that cannot be applied; the message says why, for the user."""


@dataclass(frozen=True)
class Filter:
    column: str
    op: str
    values: tuple  # one float for numeric columns, strings otherwise

    def __str__(self) -> str:
        return f"{self.column}{self.op}{','.join(str(v) for v in self.values)}"


def _numeric(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_)


def parse_filter(expression: str, schema: pa.Schema) -> Filter:
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise FilterError(f"filter longer than {MAX_EXPRESSION_CHARS} characters")
    match = _EXPRESSION.match(expression)
    if not match:
        raise FilterError(f"{expression!r}: write COLUMN OP VALUE, e.g. punsafe<0.1 or LANGUAGE=en,de")
    column, op, value = match.groups()
    if column not in schema.names:
        raise FilterError(f"{expression!r}: no column {column!r} (columns: {', '.join(schema.names)})")
    if _numeric(schema.field(column).type):
        try:
            number = float(value)
        except ValueError:
            raise FilterError(f"{expression!r}: {column} is numeric, {value!r} is not a number") from None
        if not math.isfinite(number):
            raise FilterError(f"{expression!r}: the value must be a finite number")
        return Filter(column, op, (number,))
    if op not in ("=", "!="):
        raise FilterError(f"{expression!r}: {column} is not numeric; use = or != with a list of values")
    values = tuple(v.strip() for v in value.split(",") if v.strip())
    if not values or len(values) > MAX_VALUES:
        raise FilterError(f"{expression!r}: give 1 to {MAX_VALUES} comma-separated values")
    return Filter(column, op, values)


def parse_filters(expressions: list[str], schema: pa.Schema) -> tuple[Filter, ...]:
    if len(expressions) > MAX_FILTERS:
        raise FilterError(f"at most {MAX_FILTERS} filters")
    return tuple(parse_filter(e, schema) for e in expressions if e.strip())


def _mask(table: pa.Table, item: Filter) -> pa.ChunkedArray:
    column = table[item.column]
    if len(item.values) == 1 and _numeric(column.type):
        return _NUMERIC_OPS[item.op](column, item.values[0])
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = pc.cast(column, pa.string())
    inside = pc.is_in(column, value_set=pa.array(item.values, pa.string()))
    inside = pc.if_else(pc.is_null(column), None, inside)  # null never passes, with = or !=
    return inside if item.op == "=" else pc.invert(inside)


def allowed_rows(table: pa.Table, filters: tuple[Filter, ...]) -> np.ndarray | None:
    """A boolean per row (True: passes every filter), or None when there are no filters."""
    if not filters:
        return None
    mask = _mask(table, filters[0])
    for item in filters[1:]:
        mask = pc.and_(mask, _mask(table, item))
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False).astype(bool)
