"""Parquet inputs (a file, or a folder of shards as Hugging Face datasets writes them), image
options (--image-detail, --image-max-side) and JSON task lists, over real HTTP against the mock.

The Parquet files are written by pyarrow here, shaped as ``datasets`` writes them: an image column
of ``{bytes, path}`` structs and the ``huggingface`` schema metadata.
"""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from helpers import read_jsonl, run_cli, write_png
from PIL import Image

from mpinfer.api.endpoints import parse_endpoints
from mpinfer.api.messages import ImageEncoder, build_request
from mpinfer.config import RequestSettings, RunConfig
from mpinfer.errors import ConfigError, InputError
from mpinfer.inputs import FieldKeys, RowGroupReader, Task, check_input, read_cell
from mpinfer.mockserver import MockServerProcess

MIMES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
HF_META = {b"huggingface": orjson.dumps({"info": {"features": {
    "id": {"dtype": "string", "_type": "Value"}, "prompt": {"dtype": "string", "_type": "Value"},
    "image": {"_type": "Image"}}}})}


def image_bytes(kind: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(out, kind)
    return out.getvalue()


def hf_rows(n: int, start: int = 0, kinds: tuple[str, ...] = ("PNG",)) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "prompt": f"describe picture {i}",
             "image": {"bytes": image_bytes(kinds[i % len(kinds)]), "path": f"{i}.png"}}
            for i in range(start, start + n)]


def write_hf(path: Path, rows: list[dict[str, Any]], group: int = 2) -> Path:
    """A Parquet file as datasets writes it: {bytes, path} structs, its schema metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows).replace_schema_metadata(HF_META)
    pq.write_table(table, path, row_group_size=group)
    return path


def run(mock: MockServerProcess, tmp_path: Path, source: Path, *extra: str) -> Any:
    out = tmp_path / "out" / "results.jsonl"
    return run_cli("-i", str(source), "-o", str(out), "-p", "2", "--base-url", mock.base_url,
                   "--images-key", "image", *extra, cwd=tmp_path)


def sent_urls(mock: MockServerProcess, prompt: str) -> list[dict[str, Any]]:
    body = mock.stats()["bodies"][prompt]
    return [part["image_url"] for part in body["messages"][-1]["content"]
            if part["type"] == "image_url"]


def decoded(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2])))


def test_a_datasets_parquet_file_runs_with_each_image_as_a_data_url_of_its_own_type(
        mock: MockServerProcess, tmp_path: Path) -> None:
    # Given a datasets-shaped Parquet file (2 rows a row group) with PNG, JPEG, GIF and WEBP bytes
    mock.configure(record_bodies=True)
    source = write_hf(tmp_path / "bench.parquet", hf_rows(5, kinds=tuple(MIMES)))
    # When it runs
    done = run(mock, tmp_path, source)
    # Then every row is answered once, each image sent as a data URL whose MIME its bytes show
    assert done.returncode == 0, done.stderr
    lines = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert sorted(line["id"] for line in lines) == [f"r{i}" for i in range(5)]
    kinds = list(MIMES.values())
    for i in range(5):
        urls = sent_urls(mock, f"describe picture {i}")
        assert len(urls) == 1
        assert urls[0]["url"].startswith(f"data:{kinds[i % 4]};base64,")
        assert "detail" not in urls[0]
        assert decoded(urls[0]["url"]).size == (40, 30)
    # and a line names where its image came from: the file, the row and the column
    row3 = next(line for line in lines if line["id"] == "r3")
    assert row3["images"] == [f"{source.resolve()}#row=3&column=image"]


def test_a_shard_folder_is_one_input_in_name_order_and_resumes_after_a_partial_run(
        mock: MockServerProcess, tmp_path: Path) -> None:
    # Given a folder of two shards, named as datasets names them (written in reverse order)
    data = tmp_path / "data"
    write_hf(data / "train-00001-of-00002.parquet", hf_rows(3, start=3))
    write_hf(data / "train-00000-of-00002.parquet", hf_rows(3))
    # When a trial run takes the first 2 rows, then the whole run follows
    first = run(mock, tmp_path, data, "--limit", "2")
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out" / "results.jsonl"
    assert sorted(line["id"] for line in read_jsonl(out)) == ["r0", "r1"]
    second = run(mock, tmp_path, data)
    # Then each row was asked once, and the output holds all six
    assert second.returncode == 0, second.stderr
    assert sorted(line["id"] for line in read_jsonl(out)) == [f"r{i}" for i in range(6)]
    received = mock.stats()["received"]
    assert all(received[f"describe picture {i}"] == 1 for i in range(6))
    # and --status, --validate and --export read the folder as the run did
    status = run(mock, tmp_path, data, "--status")
    assert status.returncode == 0, status.stderr
    assert "6" in status.stdout
    valid = run(mock, tmp_path, data, "--validate")
    assert valid.returncode == 0, valid.stdout + valid.stderr
    table = tmp_path / "final.csv"
    exported = run(mock, tmp_path, data, "--export", str(table))
    assert exported.returncode == 0, exported.stderr
    with table.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(6)]
    assert all(r["status"] == "ok" and r["answer"] for r in rows)
    assert rows[4]["image"].endswith("train-00001-of-00002.parquet#row=1&column=image\"]")


def test_bad_parquet_inputs_stop_before_any_request_naming_the_file(
        mock: MockServerProcess, tmp_path: Path) -> None:
    # Given a file without the id column, and a shard folder whose second shard has other columns
    no_id = tmp_path / "noid.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"]}), no_id)
    mixed = tmp_path / "mixed"
    write_hf(mixed / "train-00000-of-00002.parquet", hf_rows(2))
    pq.write_table(pa.table({"id": ["x"], "question": ["q"]}),
                   mixed / "train-00001-of-00002.parquet")
    # When each runs
    missing = run(mock, tmp_path, no_id)
    differs = run(mock, tmp_path, mixed)
    # Then both stop with exit 2, naming the column or the file, and nothing was sent
    assert missing.returncode == 2
    assert "noid.parquet" in missing.stderr and "'id'" in missing.stderr
    assert differs.returncode == 2
    assert "train-00001-of-00002.parquet" in differs.stderr
    assert mock.stats()["received"] == {}


def test_a_cell_that_is_no_image_fails_its_task_only_and_the_run_goes_on(
        mock: MockServerProcess, tmp_path: Path) -> None:
    # Given rows of raw image bytes (a binary column), one of them not an image
    source = tmp_path / "raw.parquet"
    pq.write_table(pa.table({"id": ["good", "bad"], "prompt": ["fine", "broken"],
                             "image": [image_bytes("JPEG"), b"%PDF-1.4 not an image"]}), source)
    # When it runs
    done = run(mock, tmp_path, source)
    # Then the good row is answered, the bad one is an image error in the errors file, never sent
    assert done.returncode == 1
    assert [r["id"] for r in read_jsonl(tmp_path / "out" / "results.jsonl")] == ["good"]
    errors = read_jsonl(tmp_path / "out" / "results.jsonl.errors.jsonl")
    assert [(e["id"], e["error_type"]) for e in errors] == [("bad", "image")]
    assert "not a PNG, JPEG, GIF or WEBP" in errors[0]["message"]
    assert "broken" not in mock.stats()["received"]


def test_lists_of_images_and_path_columns_are_read_and_ids_can_be_row_numbers(
        mock: MockServerProcess, tmp_path: Path) -> None:
    # Given a file without ids whose rows hold a list of structs, and one whose column holds paths
    mock.configure(record_bodies=True)
    listed = tmp_path / "listed.parquet"
    two = [{"bytes": image_bytes("PNG"), "path": None}, {"bytes": image_bytes("GIF"), "path": None}]
    pq.write_table(pa.table({"question": ["two pictures", "no picture"], "image": [two, []]}),
                   listed)
    write_png(tmp_path / "img" / "a.png")
    paths = tmp_path / "paths.parquet"
    pq.write_table(pa.table({"id": ["p"], "prompt": ["a file"], "image": ["img/a.png"]}), paths)
    # When they run (ids from the row numbers; relative paths against the file's folder)
    listed_run = run(mock, tmp_path, listed, "--id-from-row", "--prompt-key", "question")
    paths_run = run(mock, tmp_path / "img", paths, "-o", str(tmp_path / "paths_out.jsonl"))
    # Then a list sends each of its images, in order, and a path column its files
    assert listed_run.returncode == 0, listed_run.stderr
    urls = sent_urls(mock, "two pictures")
    assert [u["url"][:15] for u in urls] == ["data:image/png;", "data:image/gif;"]
    lines = {line["id"]: line for line in read_jsonl(tmp_path / "out" / "results.jsonl")}
    assert sorted(lines) == ["0", "1"] and lines["1"]["images"] == []
    assert paths_run.returncode == 0, paths_run.stderr
    assert sent_urls(mock, "a file")[0]["url"].startswith("data:image/png;base64,")


def test_image_detail_goes_on_every_image_part_and_max_side_shrinks_keeping_the_ratio(
        mock: MockServerProcess, tmp_path: Path) -> None:
    # Given a PNG and a JPEG of 400x200 pixels and a small one of 40x30
    mock.configure(record_bodies=True)
    rows = [{"id": "png", "prompt": "big png", "image": {"bytes": image_bytes("PNG", (400, 200)),
                                                          "path": None}},
            {"id": "jpg", "prompt": "big webp", "image": {"bytes": image_bytes("WEBP", (400, 200)),
                                                           "path": None}},
            {"id": "small", "prompt": "small", "image": {"bytes": image_bytes("PNG"),
                                                          "path": None}}]
    source = write_hf(tmp_path / "sizes.parquet", rows)
    # When it runs with --image-detail low --image-max-side 100
    done = run(mock, tmp_path, source, "--image-detail", "low", "--image-max-side", "100")
    # Then every part says detail low, the big ones are 100x50 (the PNG still a PNG, the WEBP a
    # JPEG) and the small one goes as it was
    assert done.returncode == 0, done.stderr
    png, = sent_urls(mock, "big png")
    webp, = sent_urls(mock, "big webp")
    small, = sent_urls(mock, "small")
    assert {png["detail"], webp["detail"], small["detail"]} == {"low"}
    assert png["url"].startswith("data:image/png;") and decoded(png["url"]).size == (100, 50)
    assert webp["url"].startswith("data:image/jpeg;") and decoded(webp["url"]).size == (100, 50)
    assert base64.b64decode(small["url"].partition(",")[2]) == rows[2]["image"]["bytes"]


def test_an_endpoint_may_set_its_models_image_detail_and_max_side() -> None:
    # Given a table whose gpt-4o endpoint asks for detail high and images of 512 pixels at most
    tables = [{"model": "gpt-4o", "api_key_env": "K", "image_detail": "high",
               "image_max_side": 512},
              {"model": "gpt-4o-mini", "api_key_env": "K"}]
    table = parse_endpoints(tables, "endpoints.toml", lambda _: "sk-test")
    config = RunConfig(model="gpt-4o,gpt-4o-mini", endpoint_table=table, image_max_side=1024)
    # When the request settings are settled
    settings = RequestSettings.of(config)
    # Then gpt-4o takes its endpoint's values, gpt-4o-mini the run's
    assert settings.image_detail == ("high", None)
    assert settings.image_max_side == (512, 1024)
    # and endpoints of one model that disagree on the detail are refused
    clash = [{**tables[0]}, {**tables[0], "image_detail": "low"}]
    try:
        parse_endpoints(clash, "endpoints.toml", lambda _: "sk-test")
    except ConfigError as exc:
        assert "image_detail" in str(exc)
    else:
        raise AssertionError("disagreeing endpoints were accepted")


def test_a_json_file_of_tasks_runs_as_a_list_or_as_an_object_of_tasks(
        mock: MockServerProcess, tmp_path: Path) -> None:
    # Given a JSON list of tasks, the same as {"tasks": [...]}, and a list with a task without id
    tasks = [{"id": "j1", "prompt": "json one"}, {"id": "j2", "prompt": "json two"}]
    listed = tmp_path / "list.json"
    listed.write_bytes(orjson.dumps(tasks))
    wrapped = tmp_path / "task.json"
    wrapped.write_bytes(orjson.dumps({"tasks": tasks}))
    broken = tmp_path / "broken.json"
    broken.write_bytes(orjson.dumps([tasks[0], {"prompt": "no id"}]))
    # When each runs
    first = run_cli("-i", str(listed), "-o", str(tmp_path / "a.jsonl"), "-p", "1",
                    "--base-url", mock.base_url, cwd=tmp_path)
    second = run_cli("-i", str(wrapped), "-o", str(tmp_path / "b.jsonl"), "-p", "1",
                     "--base-url", mock.base_url, cwd=tmp_path)
    bad = run_cli("-i", str(broken), "-o", str(tmp_path / "c.jsonl"), "-p", "1",
                  "--base-url", mock.base_url, cwd=tmp_path)
    # Then both answer both tasks, and the broken one stops naming the file and the task's index
    for done, out in ((first, "a.jsonl"), (second, "b.jsonl")):
        assert done.returncode == 0, done.stderr
        assert sorted(r["id"] for r in read_jsonl(tmp_path / out)) == ["j1", "j2"]
    assert bad.returncode == 2
    assert "broken.json" in bad.stderr and "task 1" in bad.stderr and "missing id" in bad.stderr


def test_duplicate_ids_and_rows_without_a_prompt_are_named_by_file_and_row(tmp_path: Path) -> None:
    # Given a Parquet file whose rows 0 and 2 share an id, and one whose row 1 has no prompt
    twice = tmp_path / "twice.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "a"], "prompt": ["x", "y", "z"]}), twice)
    blank = tmp_path / "blank.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["x", None]}), blank)
    # When each is checked
    errors = []
    for path in (twice, blank):
        try:
            check_input(path)
        except InputError as exc:
            errors.append(str(exc))
    # Then the first names the id and both rows, the second the file and the row
    assert len(errors) == 2
    assert "'a' (rows 0 and 2)" in errors[0]
    assert errors[1].startswith(f"{blank}: row 1: missing prompt")


def test_token_estimates_use_the_size_sent_and_the_detail(tmp_path: Path) -> None:
    # Given a task with a 2000x1000 PNG
    (tmp_path / "big.png").write_bytes(image_bytes("PNG", (2000, 1000)))
    task = Task(id="t", prompt="", images=("big.png",))
    encoder = ImageEncoder(tmp_path)

    def tokens(**options: Any) -> int:
        return build_request(task, encoder, model="gpt-4o", **options).prompt_tokens

    # When its request is built as it is, shrunk to 500 pixels, and at detail low
    # Then gpt-4o's estimate is 6 tiles, then 1 tile, then the base alone (plus the message's 4)
    assert tokens() == 4 + 85 + 6 * 170
    assert tokens(image_max_side=500) == 4 + 85 + 170
    assert tokens(image_detail="low") == 4 + 85


def test_a_datasets_file_run_without_its_images_key_is_told_which_column_holds_them(
        tmp_path: Path) -> None:
    # Given a datasets file whose images are in "image", checked with the default --images-key
    source = write_hf(tmp_path / "hf.parquet", hf_rows(2))
    # When it is checked
    try:
        check_input(source)
    except InputError as exc:
        message = str(exc)
    else:
        raise AssertionError("the images column went unnoticed")
    # Then the error names the column and the flag; naming no column sends none
    assert "--images-key image" in message
    assert check_input(source, FieldKeys(images="none")).total == 2


def test_a_row_group_too_big_to_read_whole_is_read_a_batch_at_a_time(tmp_path: Path) -> None:
    # Given a file written as one row group of 200 images (as pandas writes), and a reader whose
    # limit for reading a group whole is below that group's images column
    rows = [{"id": f"r{i}", "prompt": "p", "image": {"bytes": image_bytes("PNG", (10 + i, 10)),
                                                      "path": None}} for i in range(200)]
    source = write_hf(tmp_path / "one_group.parquet", rows, group=1000)
    assert pq.ParquetFile(source).metadata.num_row_groups == 1
    reader = RowGroupReader(max_group_bytes=1000)
    # When cells are read forward, then back to an earlier row
    wanted = [3, 70, 150, 199, 10]
    got = [read_cell(reader, f"{source.resolve()}#row={i}&column=image")[0] for i in wanted]
    # Then each is the bytes of its row (each row's image is its own)
    assert got == [rows[i]["image"]["bytes"] for i in wanted]
    assert len({bytes(b or b"") for b in got}) == len(wanted)


def test_json_lines_under_a_json_name_still_read_as_jsonl(tmp_path: Path) -> None:
    # Given JSON lines in a file named .json, and a pretty-printed {"tasks": [...]}
    lines = tmp_path / "lines.json"
    lines.write_bytes(b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n')
    pretty = tmp_path / "pretty.json"
    pretty.write_bytes(orjson.dumps({"tasks": [{"id": "c", "prompt": "z"}]},
                                    option=orjson.OPT_INDENT_2))
    # When they are checked, Then both read as their tasks
    assert check_input(lines).total == 2
    assert check_input(pretty).total == 1
