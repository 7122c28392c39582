"""The Parquet form of ``--export``: the CSV export's columns, typed, for pandas and Polars.

Answer columns have fixed types (tokens int64, cost float64, text as string); an input column takes
the type Arrow infers from its values (numbers stay numbers, an images list stays a list of
strings), and a column whose values will not share one type (a number here, a text there) is written
as text, lists and objects as JSON, as in the CSV.

Parquet's footer is written last and its column types come from all the values, so the table is held
in memory until it is written: the export already holds every answer, this adds about as much again.
"""

from __future__ import annotations

from typing import IO, Any

import orjson

from ..errors import ConfigError

INT_COLUMNS = frozenset({"prompt_tokens", "completion_tokens", "total_tokens"})
FLOAT_COLUMNS = frozenset({"cost"})


def require_pyarrow() -> Any:
    """The pyarrow module, or a ConfigError saying how to install it (checked before any work)."""
    try:
        import pyarrow
        import pyarrow.parquet  # the submodule is loaded for write_table
    except ImportError:
        raise ConfigError(
            "--export FILE.parquet needs pyarrow: pip install 'mpinfer[parquet]'"
        ) from None
    return pyarrow


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()
    return str(value)


class ParquetTable:
    """Rows collected by column, written as one Parquet file by ``finish``."""

    def __init__(self, columns: list[str], answer_columns: frozenset[str]) -> None:
        self.pa = require_pyarrow()
        self.columns = columns
        self.answer_columns = answer_columns
        self.values: dict[str, list[Any]] = {name: [] for name in columns}

    def write(self, row: dict[str, Any]) -> None:
        """Hold one row's values, column by column."""
        for name in self.columns:
            self.values[name].append(row.get(name))

    def _array(self, name: str, values: list[Any]) -> Any:
        pa = self.pa
        if name in INT_COLUMNS:
            return pa.array(values, type=pa.int64())
        if name in FLOAT_COLUMNS:
            return pa.array(values, type=pa.float64())
        if name in self.answer_columns:
            return pa.array([_as_text(v) for v in values], type=pa.string())
        try:
            array = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            return pa.array([_as_text(v) for v in values], type=pa.string())
        # A column of nothing but nulls has Arrow's null type, which some
        # readers refuse: make it text.
        return array.cast(pa.string()) if pa.types.is_null(array.type) else array

    def finish(self, handle: IO[bytes]) -> None:
        """Write the rows held as one Parquet table to ``handle``."""
        pa = self.pa
        table = pa.table({name: self._array(name, values) for name, values in self.values.items()})
        pa.parquet.write_table(table, handle)
