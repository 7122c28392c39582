"""A Batch file run without --model is accounted under the models its bodies name.

That is its log name, summary, manifest and cost; its dry run reads the bodies (text, images,
max_tokens).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from helpers import read_jsonl, run_cli, write_tasks

from mpinfer.demo import png_bytes
from mpinfer.mockserver import MockServerProcess

PNG = "data:image/png;base64," + base64.b64encode(png_bytes(1024, 1024, (10, 20, 30),
                                                            (1, 2, 3))).decode()


def _line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _bodies(model: str) -> list[dict[str, Any]]:
    return [
        _line("r1", {"model": model, "max_tokens": 40,
                     "messages": [{"role": "user", "content": [
                         {"type": "text", "text": "What is in this picture?"},
                         {"type": "image_url", "image_url": {"url": PNG}}]}]}),
        _line("r2", {"model": model, "max_completion_tokens": 60,
                     "messages": [{"role": "user", "content": [
                         {"type": "text", "text": "And this one?"},
                         {"type": "image_url", "image_url": {"url": "https://example.com/b.png",
                                                             "detail": "low"}}]}]}),
    ]


def test_a_batch_file_without_model_is_counted_under_its_bodies_model(mock: MockServerProcess,
                                                                        tmp_path: Path) -> None:
    # Given a Batch file whose bodies all ask for gpt-4o
    tasks = write_tasks(tmp_path / "batch.jsonl", _bodies("gpt-4o"))
    out = tmp_path / "out.jsonl"
    # When it runs without --model
    done = run_cli("-i", str(tasks), "-o", str(out), "-p", "1", "--base-url", mock.base_url,
                   cwd=tmp_path)
    # Then gpt-4o is asked, and the log, the summary and the manifest name gpt-4o, never the default
    assert done.returncode == 0, done.stderr
    assert mock.stats()["per_model"] == {"gpt-4o": 2}
    [log] = list((tmp_path / "logs").iterdir())
    assert "gpt-4o" in log.name and "mini" not in log.name
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert list(summary["per_model"]) == ["gpt-4o"]
    manifest = (tmp_path / "out.jsonl.runs.jsonl").read_text()
    assert '"gpt-4o"' in manifest and "gpt-4o-mini" not in manifest
    # And each answer is priced as gpt-4o and records it as the requested model
    lines = read_jsonl(out)
    assert len(lines) == 2
    for line in lines:
        assert line["mpinfer"]["requested_model"] == "gpt-4o" and line["mpinfer"]["cost"] > 0


def test_the_dry_run_of_a_batch_file_reads_its_bodies(tmp_path: Path) -> None:
    # Given the same Batch file, with a 1024x1024 inline image and a remote one at low detail
    tasks = write_tasks(tmp_path / "batch.jsonl", _bodies("gpt-4o"))
    # When it is dry-run without --model
    dry = run_cli("-i", str(tasks), "-o", str(tmp_path / "out.jsonl"), "--dry-run", "--json",
                  cwd=tmp_path)
    # Then the images are counted, max_tokens and max_completion_tokens are the ceilings, and gpt-4o
    # is priced
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert (plan["images"]["inline"], plan["images"]["remote"]) == (1, 1)
    [row] = plan["rows"]
    assert row["model"] == "gpt-4o" and row["completion_ceiling"] == 100
    # 1024x1024 at high detail is 765 tokens for gpt-4o, low detail 85; the text adds a few
    assert 765 + 85 < row["prompt_tokens"] < 765 + 85 + 40
    assert row["cost_min"] is not None and row["cost_min"] > 0


def test_a_model_without_a_published_image_rule_is_said_once_in_the_log(mock: MockServerProcess,
                                                                         tmp_path: Path) -> None:
    # Given tasks for a model OpenAI's image table does not know
    tasks = write_tasks(tmp_path / "tasks.jsonl",
                        [{"id": f"t{i}", "prompt": f"q{i}"} for i in range(3)])
    # When they run
    done = run_cli("-i", str(tasks), "-o", str(tmp_path / "out.jsonl"), "--model", "qwen-vl-max",
                   "--base-url", mock.base_url, cwd=tmp_path)
    # Then the log says once that its images are estimated as gpt-4o's
    assert done.returncode == 0, done.stderr
    [log] = list((tmp_path / "logs").iterdir())
    assert log.read_text().count("qwen-vl-max: no published image token rule") == 1


def test_a_batch_file_whose_bodies_name_two_models_is_named_by_both(mock: MockServerProcess,
                                                                     tmp_path: Path) -> None:
    # Given a Batch file whose bodies ask for gpt-4o and gpt-4o-mini
    third = _line("r3",
                  {"model": "gpt-4o-mini",
                   "messages": [{"role": "user", "content": "a third question"}]})
    tasks = write_tasks(tmp_path / "batch.jsonl", [_bodies("gpt-4o")[0], third])
    out = tmp_path / "out.jsonl"
    # When it runs without --model
    done = run_cli("-i", str(tasks), "-o", str(out), "-p", "1", "--base-url", mock.base_url,
                   cwd=tmp_path)
    # Then each body went as its own model into the one output, and the run is named by both, never
    # by a default no body asked for
    assert done.returncode == 0, done.stderr
    assert mock.stats()["per_model"] == {"gpt-4o": 1, "gpt-4o-mini": 1}
    assert ({line["mpinfer"]["requested_model"] for line in read_jsonl(out)}
            == {"gpt-4o", "gpt-4o-mini"})
    [log] = list((tmp_path / "logs").iterdir())
    assert "gpt-4o_gpt-4o-mini" in log.name  # the file name keeps letters, digits, ".", "-" and "_"
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert list(summary["per_model"]) == ["gpt-4o+gpt-4o-mini"]
