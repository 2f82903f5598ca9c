"""Row filters written as short expressions, the same in the API, the page and `crawl2clip subset`:

    punsafe<0.1   pwatermark<=0.5   similarity>=0.3   WIDTH>=1024   LANGUAGE=en,de   split!=nolang

Numeric columns take <, <=, >, >=, =, != and one number, compared in the column's own type (an
integer column such as `hash` takes a whole number within its range, exactly: int64 values are
not all floats); text and true/false columns take = or != and a comma-separated list of values.
Columns of other types (binary, lists, timestamps, ...) are refused with a message. Rows where the
column is null never pass. Masks are computed with Arrow on the memory-mapped metadata, so a
filter over a million rows takes milliseconds.
"""

import math
import re
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_FILTERS = 20
MAX_VALUES = 100
MAX_EXPRESSION_CHARS = 1000
_EXPRESSION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*$", re.DOTALL)
_DECIMAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_NUMERIC_OPS = {"<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal,
                "=": pc.equal, "!=": pc.not_equal}


class FilterError(ValueError):
    """An expression that cannot be applied; the message says why, for the user."""


@dataclass(frozen=True)
class Filter:
    column: str
    op: str
    values: tuple  # one int or float for numeric columns; strings or bools otherwise

    def __str__(self) -> str:
        return f"{self.column}{self.op}{','.join(str(v) for v in self.values)}"


def _numeric(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_)


def _textual(type_: pa.DataType) -> bool:
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def _integer_range(type_: pa.DataType) -> tuple[int, int]:
    bits = type_.bit_width
    return (0, 2**bits - 1) if pa.types.is_unsigned_integer(type_) else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def _number(expression: str, column: str, type_: pa.DataType, value: str) -> int | float:
    """The value in the column's type: a whole number in range for integer columns (exact), a
    finite float for floating ones (compared as float64, as Python compares them)."""
    if not _DECIMAL.match(value):
        if value.strip().lower().lstrip("+-") in ("inf", "infinity", "nan"):
            raise FilterError(f"{expression!r}: the value must be a finite number")
        raise FilterError(f"{expression!r}: {column} is numeric, {value!r} is not a number")
    if pa.types.is_floating(type_):
        if not math.isfinite(float(value)):
            raise FilterError(f"{expression!r}: the value must be a finite number")
        return float(value)
    exact = Decimal(value)  # compares exactly, and 1e999999999 stays cheap
    low, high = _integer_range(type_)
    if not low <= exact <= high:
        raise FilterError(f"{expression!r}: {value!r} is outside the range of {column} ({type_}: {low} to {high})")
    if exact != exact.to_integral_value():
        raise FilterError(f"{expression!r}: {column} holds whole numbers ({type_}); {value!r} is not one")
    return int(exact)


def _values(expression: str, column: str, type_: pa.DataType, value: str) -> tuple:
    values = tuple(v.strip() for v in value.split(",") if v.strip())
    if not values or len(values) > MAX_VALUES:
        raise FilterError(f"{expression!r}: give 1 to {MAX_VALUES} comma-separated values")
    if pa.types.is_boolean(type_):
        truth = {"true": True, "false": False}
        if any(v.lower() not in truth for v in values):
            raise FilterError(f"{expression!r}: {column} is true/false; write {column}=true or {column}=false")
        return tuple(truth[v.lower()] for v in values)
    return values


def parse_filter(expression: str, schema: pa.Schema) -> Filter:
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise FilterError(f"filter longer than {MAX_EXPRESSION_CHARS} characters")
    match = _EXPRESSION.match(expression)
    if not match:
        raise FilterError(f"{expression!r}: write COLUMN OP VALUE, e.g. punsafe<0.1 or LANGUAGE=en,de")
    column, op, value = match.groups()
    if column not in schema.names:
        raise FilterError(f"{expression!r}: no column {column!r} (columns: {', '.join(schema.names)})")
    type_ = schema.field(column).type
    if _numeric(type_):
        return Filter(column, op, (_number(expression, column, type_, value),))
    if not (_textual(type_) or pa.types.is_boolean(type_)):
        raise FilterError(f"{expression!r}: column {column} ({type_}) cannot be filtered; "
                          "filter numbers, text or true/false columns")
    if op not in ("=", "!="):
        raise FilterError(f"{expression!r}: {column} is not numeric; use = or != with a list of values")
    return Filter(column, op, _values(expression, column, type_, value))


def parse_filters(expressions: list[str], schema: pa.Schema) -> tuple[Filter, ...]:
    if len(expressions) > MAX_FILTERS:
        raise FilterError(f"at most {MAX_FILTERS} filters")
    return tuple(parse_filter(e, schema) for e in expressions if e.strip())


def _mask(table: pa.Table, item: Filter) -> pa.ChunkedArray:
    column = table[item.column]
    if _numeric(column.type):  # integers in the column's own type: no int64 -> float64 cast
        value_type = column.type if pa.types.is_integer(column.type) else pa.float64()
        return _NUMERIC_OPS[item.op](column, pa.scalar(item.values[0], value_type))
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    value_type = pa.bool_() if pa.types.is_boolean(column.type) else column.type
    inside = pc.is_in(column, value_set=pa.array(item.values, value_type))
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
