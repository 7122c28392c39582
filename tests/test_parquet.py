"""--export FILE.parquet: the JSONL export's columns and values, typed, read back by pyarrow.

And by pandas and Hugging Face datasets where they are installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import read_jsonl, run_cli, text_tasks, write_tasks

from mpinfer.mockserver import MockServerProcess

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _exported(tmp_path: Path, mock: MockServerProcess) -> tuple[Path, list[dict[str, object]]]:
    """A run of four tasks (one fails, one never tried) exported as Parquet and as JSONL."""
    tasks = [{**task, "tags": ["x", str(i)], "weight": i + 0.5}
             for i, task in enumerate(text_tasks(4))]
    tasks[2]["mixed"] = 7
    tasks[3]["mixed"] = "seven"
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    mock.configure(script={tasks[1]["prompt"]: ["500"]})
    ran = run_cli("-i", "tasks.jsonl", "-o", "results.jsonl", "--base-url", mock.base_url,
                  "--max-retries", "0", "--limit", "3", "-p", "1", cwd=tmp_path)
    assert ran.returncode == 1, ran.stderr
    for name in ("final.parquet", "final.jsonl"):
        made = run_cli("-i", "tasks.jsonl", "-o", "results.jsonl", "--export", name, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
    return tmp_path / "final.parquet", read_jsonl(tmp_path / "final.jsonl")


def test_parquet_export_has_the_jsonl_exports_columns_and_values_with_types(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given a run with an answered, a failed and a missing task, exported as Parquet and as JSONL
    parquet, lines = _exported(tmp_path, mock)
    # When pyarrow reads the Parquet file
    table = pq.read_table(parquet)
    # Then it has the same columns in the same order, and the same values row by row
    assert table.column_names == list(lines[0])
    assert table.to_pylist() == [
        {**row, "mixed": None if row.get("mixed") is None else str(row["mixed"])} for row in lines]
    # And numbers are numbers, lists are lists, text is text; a column of mixed types is text
    schema = table.schema
    assert pa.types.is_int64(schema.field("total_tokens").type)
    assert pa.types.is_float64(schema.field("cost").type)
    assert pa.types.is_float64(schema.field("weight").type)
    assert pa.types.is_list(schema.field("tags").type)
    assert pa.types.is_string(schema.field("answer").type)
    assert pa.types.is_string(schema.field("mixed").type)
    assert [row["status"] for row in table.to_pylist()] == ["ok", "failed", "ok", "missing"]


def test_pandas_and_datasets_read_the_parquet_export(tmp_path: Path, mock: MockServerProcess):
    readers = [name for name in ("pandas", "datasets")
               if importlib.util.find_spec(name) is not None]
    if not readers:
        pytest.skip("neither pandas nor datasets is installed")
    # Given a Parquet export
    parquet, lines = _exported(tmp_path, mock)
    # When pandas reads it, Then it has every row, the tokens as integers where answered
    if "pandas" in readers:
        import pandas

        frame = pandas.read_parquet(parquet)
        assert list(frame["id"]) == [row["id"] for row in lines]
        assert int(frame["total_tokens"].iloc[0]) == lines[0]["total_tokens"]
    # When Hugging Face datasets reads it, Then the same
    if "datasets" in readers:
        import datasets

        loaded = datasets.Dataset.from_parquet(str(parquet))
        assert loaded["id"] == [row["id"] for row in lines]
        assert loaded["tags"][0] == ["x", "0"]
