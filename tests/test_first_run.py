"""Small things a first run meets (issue 22, item 10), each through the real command line."""

from __future__ import annotations

from pathlib import Path

import orjson
from helpers import read_jsonl, run_cli, text_tasks, write_png, write_tasks

from mpinfer.mockserver import MockServerProcess


def _run(tmp_path: Path, mock: MockServerProcess, *extra: str):
    return run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--base-url", mock.base_url, *extra,
                   cwd=tmp_path)


def test_validate_with_json_prints_one_json_object(tmp_path: Path, mock: MockServerProcess):
    # Given an output that answers two of three tasks
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(2))
    assert _run(tmp_path, mock).returncode == 0
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    # When it is validated with --json
    proc = _run(tmp_path, mock, "--validate", "--json")
    # Then stdout is one JSON object naming the missing id, and the exit code still says so
    assert proc.returncode == 1
    report = orjson.loads(proc.stdout)
    assert report["ok"] is False and len(report["outputs"]) == 1
    [output] = report["outputs"]
    assert (output["output"], output["records"]) == ("out.jsonl", 2)
    assert output["counts"] == {"missing_id": 1}
    assert output["examples"]["missing_id"][0]["id"] == "t2"


def test_the_export_help_names_parquet(tmp_path: Path):
    # When the help is asked for
    shown = " ".join(run_cli("--help", cwd=tmp_path).stdout.split())
    # Then --export names every format it writes
    assert ".csv, .jsonl or .parquet" in shown


def test_one_task_with_problems_is_said_in_the_singular(tmp_path: Path, mock: MockServerProcess):
    # Given two tasks, one of whose image is missing
    tasks = text_tasks(2)
    tasks[0]["images"] = ["gone.png"]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    # When a dry run checks them
    proc = _run(tmp_path, mock, "--dry-run")
    # Then it says "1 task with problems"
    assert "1 would fail: 1 task with problems" in proc.stdout, proc.stdout


def test_a_start_after_the_end_is_an_input_error_before_anything_is_sent(
        tmp_path: Path, mock: MockServerProcess):
    # Given ten tasks
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(10))
    # When rows 5 to 2 are asked for (or 3 to 3)
    backwards = _run(tmp_path, mock, "--start", "5", "--end", "2")
    empty = _run(tmp_path, mock, "--start", "3", "--end", "3")
    # Then each is refused as a settings error (exit 2), saying why, and nothing is sent or written
    assert backwards.returncode == empty.returncode == 2
    assert "--start 5 --end 2 selects no row" in backwards.stderr, backwards.stderr
    assert mock.stats()["requests"] == 0
    assert not (tmp_path / "out.jsonl").exists()


def test_a_run_with_nothing_to_do_leaves_no_new_log(tmp_path: Path, mock: MockServerProcess):
    # Given a job run to the end, with its log
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    assert _run(tmp_path, mock).returncode == 0
    logs = sorted((tmp_path / "logs").glob("*.log"))
    assert len(logs) == 1
    # When it is run again, with nothing left to do
    again = _run(tmp_path, mock)
    # Then it says all is done and no new log file is left behind (nor named)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("done 3/3"), again.stdout
    assert "log:" not in again.stdout
    assert sorted((tmp_path / "logs").glob("*.log")) == logs
    # And the manifest still records both runs
    events = [r["event"] for r in read_jsonl(tmp_path / "out.jsonl.runs.jsonl")]
    assert events == ["start", "end", "start", "end"]


def test_the_missing_id_error_suggests_numbering_the_rows(tmp_path: Path, mock: MockServerProcess):
    # Given tasks without ids
    write_tasks(tmp_path / "tasks.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    # When they run
    proc = _run(tmp_path, mock)
    # Then the input error says how to name the field, or to number the rows; nothing is sent
    assert proc.returncode == 2
    assert "--id-key" in proc.stderr and "--id-from-row" in proc.stderr, proc.stderr
    assert mock.stats()["requests"] == 0


def test_a_csv_whose_image_paths_are_relative_to_the_project_says_where_it_looked(
        tmp_path: Path, mock: MockServerProcess):
    # Given a CSV in _csvs/ whose image paths are relative to the project folder above it
    write_png(tmp_path / "imgs" / "cat.png")
    (tmp_path / "_csvs").mkdir()
    (tmp_path / "_csvs" / "tasks.csv").write_text("id,prompt,images\nc1,what is it?,imgs/cat.png\n")
    args = ("-i", "_csvs/tasks.csv", "-o", "out.jsonl", "--base-url", mock.base_url)
    # When it runs
    proc = run_cli(*args, cwd=tmp_path)
    # Then the task fails, and its error names the folder the path was resolved against and the
    # flag that sets another
    assert proc.returncode == 1
    [failure] = read_jsonl(tmp_path / "out.jsonl.errors.jsonl")
    assert f"resolved against {(tmp_path / '_csvs').resolve()}" in failure["message"]
    assert "--image-root" in failure["message"]
    # And with --image-root set to the project the image is found
    again = run_cli(*args, "--image-root", ".", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [row["id"] for row in read_jsonl(tmp_path / "out.jsonl")] == ["c1"]


def test_a_csv_export_for_excel_starts_with_a_utf8_byte_order_mark(tmp_path: Path,
                                                                    mock: MockServerProcess):
    # Given a finished run on a Chinese prompt
    write_tasks(tmp_path / "tasks.jsonl", [{"id": "z1", "prompt": "这是什么"}])
    assert _run(tmp_path, mock).returncode == 0
    # When it is exported to CSV for Excel, and without --excel
    excel = _run(tmp_path, mock, "--export", "excel.csv", "--excel")
    plain = _run(tmp_path, mock, "--export", "plain.csv")
    # Then the Excel file starts with the UTF-8 BOM and the text is intact; the plain one has none
    assert excel.returncode == 0 and plain.returncode == 0, excel.stderr + plain.stderr
    data = (tmp_path / "excel.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbfid,")
    assert "这是什么" in data.decode("utf-8-sig")
    assert not (tmp_path / "plain.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    # And --excel without a CSV export is refused
    refused = _run(tmp_path, mock, "--export", "out2.jsonl", "--excel")
    assert refused.returncode == 2 and "--excel goes with --export" in refused.stderr


def test_fresh_moves_the_logs_of_its_own_output_only(tmp_path: Path, mock: MockServerProcess):
    # Given two outputs that ran from the same folder, sharing its log folder
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(2))
    assert _run(tmp_path, mock).returncode == 0
    other = run_cli("-i", "tasks.jsonl", "-o", "other.jsonl", "--base-url", mock.base_url,
                    cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    # Then each log carries the name of its output
    assert len(logs) == 2 and {name.rsplit(".", 2)[1] for name in logs} == {"out", "other"}
    # When the first starts over with --fresh
    assert _run(tmp_path, mock, "--fresh").returncode == 0
    # Then its own old log moved to its backup, and the other output's log stayed
    [backup] = tmp_path.glob("out.jsonl.backup-*")
    [own] = [name for name in logs if name.endswith(".out.log")]
    [others] = [name for name in logs if name.endswith(".other.log")]
    assert [p.name for p in (backup / "logs").iterdir()] == [own]
    assert others in {p.name for p in (tmp_path / "logs").iterdir()}
