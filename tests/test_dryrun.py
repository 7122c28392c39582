"""--dry-run as a library: every pending task checked and estimated, nothing sent or written.

Done tasks are skipped. Expected numbers are worked out by hand from the rules in
mpinfer.api.tokens: a message costs 4 tokens plus one per 4 characters (rounded up); an image at
auto detail costs 85 plus 170 per 512-pixel tile after scaling.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import run_cli

from mpinfer.api.prices import PriceTable, load_prices
from mpinfer.config import RunConfig
from mpinfer.demo import png_bytes
from mpinfer.errors import InputError
from mpinfer.reports.dryrun import MAX_PROBLEMS_KEPT, DryRunPlan, plan
from mpinfer.store.output import run_outputs

RED = (200, 30, 30)
WHITE = (255, 255, 255)
HOUSE_INPUT = 2.0  # USD per 1M tokens, from the --prices file below
HOUSE_OUTPUT = 8.0


@cache
def big_png() -> bytes:
    """A real 1024x1024 PNG: 2x2 tiles after OpenAI scales it to 768x768, 85 + 4 * 170 = 765."""
    return png_bytes(1024, 1024, RED, WHITE)


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def config_for(tmp_path: Path, tasks: Sequence[dict[str, Any]], **settings: Any) -> RunConfig:
    """A config whose input holds ``tasks`` and whose output is ``out.jsonl``, both in tmp_path."""
    write_jsonl(tmp_path / "tasks.jsonl", tasks)
    return RunConfig(input=tmp_path / "tasks.jsonl", output=tmp_path / "out.jsonl", **settings)


def house_prices(tmp_path: Path) -> PriceTable:
    """The built-in table plus a --prices file that prices 'house-model' only."""
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"house-model": {"input": HOUSE_INPUT, "output": HOUSE_OUTPUT}}))
    return load_prices(path)


def result_line(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "input_prompt": "p", "answer": "a", "model": "house-model",
            "requested_model": "house-model", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


def house_cost(prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * HOUSE_INPUT + completion_tokens * HOUSE_OUTPUT) / 1_000_000


# --- text, tokens and cost ------------------------------------------------------------------------


def test_text_tasks_are_estimated_at_four_tokens_a_message_plus_one_per_four_characters(
    tmp_path: Path,
) -> None:
    # Given two text tasks, one with its own system message, a run system prompt, max_tokens and a
    # price
    config = config_for(tmp_path, [
        {"id": "a", "prompt": "x" * 10},
        {"id": "b", "prompt": "y" * 17, "system": "You are a careful judge."},
    ], model="house-model", system_prompt="Be brief.", max_tokens=100)
    # When the run is planned
    result = plan(config, house_prices(tmp_path))
    # Then a = (4 + ceil(9/4)) + (4 + ceil(10/4)) = 7 + 7 = 14 and b = (4 + ceil(24/4)) + (4 +
    # ceil(17/4)) = 10 + 9
    assert (result.prompt.tasks, result.prompt.total, result.prompt.min,
            result.prompt.max) == (2, 33, 14, 19)
    assert result.prompt.mean == 16.5
    [row] = result.rows
    assert (row.model, row.output, row.done, row.pending, row.problems) == ("house-model",
                                                                            config.output, 0, 2, 0)
    assert (row.prompt_tokens, row.completion_ceiling) == (33, 200)
    # And the cost runs from the prompts alone to the prompts plus two full answers of 100 tokens
    assert row.cost_min == pytest.approx(33 * 2.0 / 1e6)
    assert row.cost_max == pytest.approx((33 * 2.0 + 200 * 8.0) / 1e6)
    assert (result.totals.cost_min, result.totals.cost_max) == (row.cost_min, row.cost_max)
    assert result.max_tokens_assumed is False
    assert result.unpriced_models == ()
    assert result.ok


def test_a_task_with_its_own_max_tokens_lowers_the_completion_ceiling(tmp_path: Path) -> None:
    # Given a run max_tokens of 50 and one task asking for at most 7
    config = config_for(tmp_path, [
        {"id": "a", "prompt": "abcd"},
        {"id": "b", "prompt": "abcd", "max_tokens": 7},
    ], model="house-model", max_tokens=50)
    # When the run is planned
    result = plan(config, house_prices(tmp_path))
    # Then the ceiling is 50 + 7, and each prompt is 4 + 1 tokens
    [row] = result.rows
    assert (row.prompt_tokens, row.completion_ceiling) == (10, 57)
    assert row.cost_max == pytest.approx(house_cost(10, 57))
    assert result.max_tokens_assumed is False


def test_without_any_max_tokens_the_default_answer_length_is_assumed_and_said(
    tmp_path: Path,
) -> None:
    # Given no max_tokens, neither the run's nor the tasks'
    config = config_for(tmp_path,
                        [{"id": "a", "prompt": "abcd"}, {"id": "b", "prompt": "abcdefgh"}],
                        model="house-model")
    # When the run is planned
    result = plan(config, house_prices(tmp_path))
    # Then each answer is counted at 256 tokens, and the plan says it assumed so
    [row] = result.rows
    assert (row.prompt_tokens, row.completion_ceiling) == (5 + 6, 2 * 256)
    assert result.max_tokens_assumed is True
    assert result.assumed_max_tokens == 256
    assert row.cost_max == pytest.approx(house_cost(11, 512))


# --- images ---------------------------------------------------------------------------------------


def test_a_1024_pixel_square_png_counts_765_tokens_and_is_the_largest_image(tmp_path: Path) -> None:
    # Given a task with a real 1024x1024 PNG and another with a small 8x6 one
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "big.png").write_bytes(big_png())
    small = png_bytes(8, 6, RED, WHITE)
    (tmp_path / "img" / "small.png").write_bytes(small)
    config = config_for(tmp_path, [
        {"id": "big", "prompt": "abcd", "images": "img/big.png"},
        {"id": "small", "prompt": "abcd", "images": ["img/small.png"]},
    ], model="house-model", max_tokens=10)
    # When the run is planned
    result = plan(config, house_prices(tmp_path))
    # Then big = 4 + 1 + 765 and small = 4 + 1 + (85 + 170 for its one tile)
    assert (result.prompt.max, result.prompt.min) == (770, 260)
    assert result.rows[0].prompt_tokens == 1030
    # And the images are counted, their bytes added up, and the largest named with its size in
    # pixels
    images = result.images
    assert (images.local, images.inline, images.remote) == (2, 0, 0)
    assert images.local_bytes == len(big_png()) + len(small)
    assert images.largest is not None
    assert (images.largest.path, images.largest.bytes) == (
        str(tmp_path / "img" / "big.png"), len(big_png()))
    assert (images.largest.width, images.largest.height,
            images.largest.task_id) == (1024, 1024, "big")


def jpeg_with_metadata(width: int, height: int, metadata_bytes: int) -> bytes:
    """A JPEG's markers: APP1 segments of padding (as EXIF, ICC profiles, thumbnails), its frame."""
    segments = b""
    while metadata_bytes > 0:
        chunk = min(metadata_bytes, 60_000)
        segments += b"\xff\xe1" + struct.pack(">H", chunk + 2) + bytes(chunk)
        metadata_bytes -= chunk
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + bytes(9)
    return b"\xff\xd8" + segments + frame + b"\xff\xd9"


def test_a_jpeg_whose_frame_header_lies_past_64_kib_is_sized_from_all_its_bytes(
    tmp_path: Path,
) -> None:
    # Given a 1024x1024 JPEG with 100 kB of metadata before its frame header
    (tmp_path / "photo.jpg").write_bytes(jpeg_with_metadata(1024, 1024, 100_000))
    config = config_for(tmp_path, [{"id": "p", "prompt": "abcd", "images": "photo.jpg"}],
                        model="gpt-4o", max_tokens=10)
    # When the run is planned
    result = plan(config, house_prices(tmp_path))
    # Then its size is found, so it is no problem and counts 765 tokens, not a guess
    assert result.ok
    assert result.images.largest is not None
    assert (result.images.largest.width, result.images.largest.height) == (1024, 1024)
    assert result.rows[0].prompt_tokens == 4 + 1 + 765


def test_missing_fake_and_truncated_images_are_problems_left_out_of_the_estimate(
    tmp_path: Path,
) -> None:
    # Given a text file named .png, a PNG cut off before its size, a missing file, and one good text
    # task
    (tmp_path / "fake.png").write_text("this is not an image\n")
    (tmp_path / "cut.png").write_bytes(png_bytes(8, 6, RED, WHITE)[:20])
    config = config_for(tmp_path, [
        {"id": "fake", "prompt": "look", "images": "fake.png"},
        {"id": "ok", "prompt": "abcd"},
        {"id": "cut", "prompt": "look", "images": "cut.png"},
        {"id": "gone", "prompt": "look", "images": ["nowhere.png"]},
    ], model="house-model", max_tokens=10)
    # When the run is planned
    result = plan(config, house_prices(tmp_path))
    # Then each broken task is a problem, with its id, its line and what is wrong
    assert not result.ok
    assert result.problem_count == 3
    assert [(p.id, p.line) for p in result.problems] == [("fake", 1), ("cut", 3), ("gone", 4)]
    fake, cut, gone = (p.message for p in result.problems)
    assert "not a PNG, JPEG, GIF or WEBP image" in fake
    assert "cannot read its size: corrupt or truncated?" in cut and "cut.png" in cut
    assert "nowhere.png" in gone
    # And only the good task is estimated
    [row] = result.rows
    assert (row.pending, row.problems, row.estimated) == (4, 3, 1)
    assert (row.prompt_tokens, row.completion_ceiling) == (5, 10)
    assert result.images.local == 0


def test_only_the_first_problems_are_kept_but_all_are_counted(tmp_path: Path) -> None:
    # Given more tasks with a missing image than the plan keeps
    count = MAX_PROBLEMS_KEPT + 5
    config = config_for(tmp_path, [{"id": f"t{n}", "prompt": "p", "images": f"missing{n}.png"}
                                   for n in range(count)])
    # When the run is planned
    result = plan(config, house_prices(tmp_path))
    # Then the first ones are kept in input order and every one is counted
    assert result.problem_count == count
    assert [p.id for p in result.problems] == [f"t{n}" for n in range(MAX_PROBLEMS_KEPT)]
    assert result.rows[0].problems == count


def test_a_shared_image_is_read_once_whether_it_is_good_huge_or_broken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given files each shared by several tasks: a good PNG, one over the encoder's 16 MiB cache
    # limit, a PNG cut off before its size, and a text file named .png
    (tmp_path / "shared.png").write_bytes(png_bytes(16, 16, RED, WHITE))
    huge = png_bytes(16, 16, RED, WHITE) + bytes(17 * 1024 * 1024)  # a real header, then padding
    (tmp_path / "huge.png").write_bytes(huge)
    (tmp_path / "cut.png").write_bytes(png_bytes(16, 16, RED, WHITE)[:20])
    (tmp_path / "fake.png").write_text("not an image")
    tasks = [{"id": f"{name}{n}", "prompt": "p", "images": f"{name}.png"}
             for n in range(3) for name in ("shared", "huge", "cut", "fake")]
    config = config_for(tmp_path, tasks, model="gpt-4o")
    prices = house_prices(tmp_path)
    reads: Counter[str] = Counter()
    real_read_bytes = Path.read_bytes

    def counting_read_bytes(self: Path) -> bytes:
        reads[self.name] += 1
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", counting_read_bytes)
    # When the run is planned
    result = plan(config, prices)
    # Then each file was read once, and every task that uses a broken one is a problem
    assert dict(reads) == {"shared.png": 1, "huge.png": 1, "cut.png": 1, "fake.png": 1}
    assert sorted(p.id for p in result.problems) == [
        "cut0", "cut1", "cut2", "fake0", "fake1", "fake2"]
    assert all("not a PNG" in p.message for p in result.problems if p.id.startswith("fake"))
    # And the good ones count every time they are sent
    assert result.images.local == 6
    assert result.images.largest is not None and result.images.largest.bytes == len(huge)
    assert result.rows[0].prompt_tokens == 6 * (4 + 1 + 255)


def test_a_remote_image_is_counted_and_estimated_but_never_fetched(tmp_path: Path) -> None:
    # Given a task whose image is an http URL served on 127.0.0.1 by a server that counts its
    # requests
    hits: list[str] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = big_png()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Recorder) as base:
        config = config_for(tmp_path,
                            [{"id": "r", "prompt": "abcd", "images": [f"{base}/cat.png"]}],
                            model="house-model", max_tokens=10)
        # When the run is planned
        result = plan(config, house_prices(tmp_path))
    # Then the image is counted as remote, estimated as an unknown image (765), and nothing was
    # requested
    assert hits == []
    assert (result.images.local, result.images.remote, result.images.local_bytes) == (0, 1, 0)
    assert result.images.largest is None
    assert result.rows[0].prompt_tokens == 4 + 1 + 765
    assert result.ok


def test_data_urls_in_the_input_are_checked_from_their_bytes(tmp_path: Path) -> None:
    # Given a task with an inline 8x6 PNG and one with a data: URL that holds text
    small = png_bytes(8, 6, RED, WHITE)
    good = "data:image/png;base64," + base64.b64encode(small).decode()
    bad = "data:image/png;base64," + base64.b64encode(b"hello, not an image").decode()
    config = config_for(tmp_path, [
        {"id": "inline", "prompt": "abcd", "images": good},
        {"id": "text", "prompt": "abcd", "images": bad},
    ], model="house-model", max_tokens=10)
    # When the run is planned
    result = plan(config, house_prices(tmp_path))
    # Then the inline PNG is counted with its real size (one tile: 255) and the other is a problem
    assert (result.images.inline, result.images.local_bytes) == (1, len(small))
    assert result.rows[0].prompt_tokens == 4 + 1 + 255
    [problem] = result.problems
    assert problem.id == "text" and "not a PNG, JPEG, GIF or WEBP image" in problem.message


# --- resume and models ----------------------------------------------------------------------------


def test_tasks_already_in_the_output_are_counted_done_and_not_checked(tmp_path: Path) -> None:
    # Given four tasks, two of them answered in the output (one of those has an image that is gone
    # since), and a foreign id in the output that is not in the input
    config = config_for(tmp_path, [
        {"id": "t1", "prompt": "abcd", "images": "deleted.png"},
        {"id": "t2", "prompt": "abcd"},
        {"id": "t3", "prompt": "abcd"},
        {"id": "t4", "prompt": "abcdefgh"},
    ], model="house-model", max_tokens=10)
    assert config.output is not None
    write_jsonl(config.output, [result_line("t1"), result_line("t3"), result_line("stranger")])
    # When the run is planned
    result = plan(config, house_prices(tmp_path))
    # Then the done tasks are counted, not checked, and only t2 and t4 are estimated
    [row] = result.rows
    assert (result.tasks, result.tasks_pending, row.done, row.pending,
            row.problems) == (4, 2, 2, 2, 0)
    assert (row.prompt_tokens, row.completion_ceiling) == (5 + 6, 20)
    assert result.ok


def test_two_models_get_a_row_each_and_the_unpriced_one_has_no_cost(tmp_path: Path) -> None:
    # Given a run against a priced and an unpriced model, task a done for the priced one only,
    # and a task that names its own model, read (--model-key model) but ignored when a run has
    # several
    config = config_for(tmp_path, [
        {"id": "a", "prompt": "abcd"},
        {"id": "b", "prompt": "x" * 12, "model": "gpt-4o"},
    ], model="house-model,mystery-model", max_tokens=40, model_key="model")
    assert config.output is not None
    house_out, mystery_out = (out.path for out in run_outputs(config.output, (), config.models))
    write_jsonl(house_out, [result_line("a")])
    # When the run is planned
    result = plan(config, house_prices(tmp_path))
    # Then each model has its own output, done and pending counts, tokens and ceiling
    house, mystery = result.rows
    assert (house.model, house.output, house.done, house.pending) == (
        "house-model", house_out, 1, 1)
    assert (mystery.model, mystery.output, mystery.done, mystery.pending) == ("mystery-model",
                                                                              mystery_out, 0, 2)
    assert (house.prompt_tokens, house.completion_ceiling) == (7, 40)
    assert (mystery.prompt_tokens, mystery.completion_ceiling) == (5 + 7, 80)
    assert house.requested_models == ("house-model",)
    # And the priced model is costed, the other has None and is named
    assert house.cost_min == pytest.approx(house_cost(7, 0))
    assert house.cost_max == pytest.approx(house_cost(7, 40))
    assert (mystery.cost_min, mystery.cost_max) == (None, None)
    assert result.unpriced_models == ("mystery-model",)
    # And the totals add both rows' counts but only the priced cost
    totals = result.totals
    assert (totals.done, totals.pending, totals.prompt_tokens,
            totals.completion_ceiling) == (1, 3, 19, 120)
    assert totals.cost_max == pytest.approx(house_cost(7, 40))
    assert result.tasks_pending == 2


def test_in_a_one_model_run_a_task_is_priced_at_the_model_it_names(tmp_path: Path) -> None:
    # Given a one-model run in which task b asks for gpt-4o (built-in price: 2.50 in, 10.00 out),
    # per-task models asked for (--model-key model)
    config = config_for(tmp_path, [
        {"id": "a", "prompt": "abcd"},
        {"id": "b", "prompt": "x" * 12, "model": "gpt-4o"},
    ], model="house-model", max_tokens=40, model_key="model")
    # When the run is planned
    result = plan(config, house_prices(tmp_path))
    # Then each task is priced at the model it would be sent to
    [row] = result.rows
    assert row.requested_models == ("gpt-4o", "house-model")
    assert row.cost_min == pytest.approx(house_cost(5, 0) + 7 * 2.50 / 1e6)
    assert row.cost_max == pytest.approx(house_cost(5, 40) + (7 * 2.50 + 40 * 10.00) / 1e6)


# --- what a dry run does not do -------------------------------------------------------------------


def test_bad_input_stops_the_plan_with_the_file_and_line(tmp_path: Path) -> None:
    # Given an input whose second line has no prompt
    config = config_for(tmp_path, [{"id": "a", "prompt": "ok"}, {"id": "b"}])
    # When the run is planned
    with pytest.raises(InputError) as caught:
        plan(config, house_prices(tmp_path))
    # Then the error names the file and the line, as a real run's would
    assert (caught.value.path, caught.value.line) == (str(config.input), 2)
    assert "missing prompt" in str(caught.value)


def test_a_dry_run_writes_locks_and_repairs_nothing(tmp_path: Path) -> None:
    # Given an output whose last line is torn, as a killed run leaves it
    config = config_for(tmp_path, [{"id": "a", "prompt": "abcd"}, {"id": "b", "prompt": "abcd"}],
                        model="house-model,other-model")
    assert config.output is not None
    first_out = run_outputs(config.output, (), config.models)[0].path
    first_out.write_bytes(orjson.dumps(result_line("a")) + b'\n{"id": "b", "answ')
    prices = house_prices(tmp_path)
    before = {path: path.read_bytes() for path in tmp_path.iterdir()}
    # When the run is planned
    result = plan(config, prices)
    # Then no file was created, changed or moved aside, and the torn task is still pending
    assert {path: path.read_bytes() for path in tmp_path.iterdir()} == before
    assert (result.rows[0].done, result.rows[0].pending) == (1, 1)


def test_the_plan_turns_into_plain_json(tmp_path: Path) -> None:
    # Given a planned run with an image, a problem and two models
    (tmp_path / "a.png").write_bytes(png_bytes(8, 6, RED, WHITE))
    config = config_for(tmp_path, [
        {"id": "a", "prompt": "abcd", "images": "a.png"},
        {"id": "b", "prompt": "abcd", "images": "gone.png"},
    ], model="house-model,mystery-model")
    result: DryRunPlan = plan(config, house_prices(tmp_path))
    # When it is turned into a dict and dumped
    data = json.loads(json.dumps(result.to_dict()))
    # Then paths are strings and every part is there
    assert data["input"] == str(config.input)
    assert [row["output"] for row in data["rows"]] == [str(row.output) for row in result.rows]
    assert [row["estimated"] for row in data["rows"]] == [1, 1]
    assert data["problems"] == [{"id": "b", "line": 2, "message": result.problems[0].message}]
    assert data["images"]["largest"]["width"] == 8
    assert data["unpriced_models"] == ["mystery-model"]
    assert data["ok"] is False


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 in a thread for the length of a with block; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_same_image_costs_gpt_4o_mini_its_own_published_token_count(tmp_path: Path) -> None:
    # Given a task with a 1024x1024 PNG, planned for gpt-4o and for gpt-4o-mini
    (tmp_path / "big.png").write_bytes(big_png())
    config = config_for(tmp_path, [{"id": "big", "prompt": "abcd", "images": "big.png"}],
                        max_tokens=10, model="gpt-4o,gpt-4o-mini")
    # When the run is planned
    result = plan(config, load_prices(None))
    # Then gpt-4o counts 85 + 4 x 170 for the image, gpt-4o-mini 2833 + 4 x 5667 (OpenAI's table)
    tokens = {row.model: row.prompt_tokens for row in result.rows}
    assert tokens == {"gpt-4o": 4 + 1 + 765, "gpt-4o-mini": 4 + 1 + 2833 + 4 * 5667}


def test_a_several_model_dry_run_prints_the_prompt_tokens_of_every_model(tmp_path: Path) -> None:
    # Given a task with a 1024x1024 image, which gpt-4o and gpt-4o-mini bill at different counts
    (tmp_path / "big.png").write_bytes(big_png())
    write_jsonl(tmp_path / "tasks.jsonl", [{"id": "big", "prompt": "abcd", "images": "big.png"}])
    args = ("-i", "tasks.jsonl", "-o", "out.jsonl", "--model", "gpt-4o,gpt-4o-mini", "--dry-run")
    # When the command line plans the run, as text and as JSON
    text = run_cli(*args, cwd=tmp_path)
    data = orjson.loads(run_cli(*args, "--json", cwd=tmp_path).stdout)
    # Then the total counts both models' requests, as their rows do
    both = (4 + 1 + 765) + (4 + 1 + 2833 + 4 * 5667)
    assert [row["prompt_tokens"] for row in data["rows"]] == [770, 4 + 1 + 2833 + 4 * 5667]
    assert data["prompt"]["total"] == data["totals"]["prompt_tokens"] == both
    assert f"prompt tokens (estimate): {both} in all" in text.stdout, text.stdout
