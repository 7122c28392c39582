"""--backend batch cleans up: each merged batch's files are deleted at the provider, best effort.

The real command line in its own process against the mock's Files and Batches APIs over HTTP; what
the mock still stores, and what it was asked to delete, is read from its stats
(``GET /_mock/batches``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import openai
import pytest
from helpers import FAKE_KEY, read_jsonl, run_cli, text_tasks, write_tasks

from mpinfer.mockserver import MockServerProcess

OUT = "out/results.jsonl"


@pytest.fixture
def mock(batch_mock: MockServerProcess) -> MockServerProcess:
    """This module's mock is the Batch API one (conftest.batch_mock), reset for each test."""
    return batch_mock


def _run(tmp_path: Path, mock: MockServerProcess, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("-i", "tasks.jsonl", "-o", OUT, "--backend", "batch", "--batch-poll", "0.1",
                   "--base-url", mock.base_url, "--retry-backoff", "0.05", "--timeout", "5", *extra,
                   cwd=tmp_path)


def _batch_files(mock: MockServerProcess) -> set[str]:
    """Every file the mock's batches were made from or wrote: inputs, outputs and error files (a
    batch is listed to the key that made it: the run's)."""
    client = openai.OpenAI(base_url=mock.base_url, api_key=FAKE_KEY, max_retries=0, timeout=10)
    try:
        batches = client.batches.list(limit=100).data
    finally:
        client.close()
    ids = {f for b in batches for f in (b.input_file_id, b.output_file_id, b.error_file_id)}
    return {f for f in ids if f}


def _answered_ids(tmp_path: Path) -> list[str]:
    return sorted(str(r["id"]) for r in read_jsonl(tmp_path / OUT))


def _given_two_batches_one_with_an_error_file(tmp_path: Path, mock: MockServerProcess) -> None:
    """Six tasks, t1 failing once with 500: two batches, the first with an error file.

    The first batch has an output and an error file; t1 goes into a second batch (its own input and
    output file).
    """
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(6))
    mock.batch_faults(script={"t1": ["500"]})


def test_a_batch_run_deletes_every_input_output_and_error_file_of_its_batches_once_merged(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given two batches, the first with an error file
    _given_two_batches_one_with_an_error_file(tmp_path, mock)
    # When the batch backend runs
    proc = _run(tmp_path, mock)
    # Then every answer is in the output
    assert proc.returncode == 0, proc.stderr
    assert _answered_ids(tmp_path) == [f"t{i}" for i in range(6)]
    # And the mock stores none of the batches' files: each of the five was deleted, once
    files = _batch_files(mock)
    assert len(files) == 5  # two inputs, two outputs, one error file
    stats = mock.batch_stats()
    assert stats["file_ids"] == []
    assert sorted(stats["deleted_files"]) == sorted(files)


def test_keep_batch_files_leaves_every_file_of_the_batches_at_the_provider(tmp_path: Path,
                                                                           mock: MockServerProcess):
    # Given two batches, the first with an error file
    _given_two_batches_one_with_an_error_file(tmp_path, mock)
    # When the batch backend runs with --keep-batch-files
    proc = _run(tmp_path, mock, "--keep-batch-files")
    # Then every answer is in the output, and all five files are still stored, none deleted
    assert proc.returncode == 0, proc.stderr
    assert _answered_ids(tmp_path) == [f"t{i}" for i in range(6)]
    stats = mock.batch_stats()
    assert stats["file_ids"] == sorted(_batch_files(mock)) and len(stats["file_ids"]) == 5
    assert stats["deleted_files"] == []


@pytest.mark.parametrize("status", [500, 404])
def test_a_delete_the_provider_refuses_is_a_warning_and_the_run_ends_as_it_would_have(
    tmp_path: Path, mock: MockServerProcess, status: int,
):
    # Given a provider whose file deletes all fail (a 500, or a 404 as for a file already gone)
    _given_two_batches_one_with_an_error_file(tmp_path, mock)
    mock.batch_faults(delete_status=status)
    # When the batch backend runs
    proc = _run(tmp_path, mock)
    # Then the run succeeds with every answer, as if the deletes had worked
    assert proc.returncode == 0, proc.stderr
    assert _answered_ids(tmp_path) == [f"t{i}" for i in range(6)]
    # And each file that could not be deleted is named in a warning, and is still stored
    files = _batch_files(mock)
    assert len(files) == 5  # two inputs, two outputs, one error file
    for file_id in files:
        assert f"batch file {file_id} not deleted at the provider ({status}" in proc.stderr
    assert mock.batch_stats()["file_ids"] == sorted(files)
