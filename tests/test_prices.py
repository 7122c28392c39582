"""The price table: every built-in price dated and sourced, the providers' names found, and a
dry run that shows which price it will count (no server needed but for the dry run's own check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli, text_tasks, write_tasks

from mpinfer.api.prices import BUILT_IN, PROVIDERS, load_prices


def test_every_built_in_price_has_a_date_and_a_source_page() -> None:
    assert BUILT_IN
    for name, price in BUILT_IN.items():
        assert price.as_of and len(price.as_of) == 7, name  # year and month
        assert price.source and price.source.startswith("https://"), name
        assert 0 < price.input and 0 < price.output, name


def test_the_providers_the_users_run_are_in_the_table() -> None:
    names = {provider.name.split()[0] for provider in PROVIDERS}
    assert {"OpenAI", "DeepSeek", "Qwen"} <= names
    table = load_prices()
    # the names their servers answer with: a provider prefix (LiteLLM), a dated snapshot
    for model in ("deepseek-chat", "deepseek/deepseek-reasoner", "qwen-vl-max-latest",
                  "dashscope/qwen3-vl-plus", "qwen3-vl-plus-2025-12-19", "gpt-4o-2024-11-20"):
        assert table.find(model) is not None, model
    # a self-hosted model has no price: its cost is unknown, not 0
    assert table.find("Qwen/Qwen2.5-VL-7B-Instruct") is None
    assert table.cost("Qwen/Qwen2.5-VL-7B-Instruct", 100, 10) is None


def test_a_price_from_a_file_names_the_file_as_its_source(tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[my-vlm]\ninput = 0.2\noutput = 0.8\n')
    price = load_prices(prices).find("my-vlm")
    assert price is not None and price.source == str(prices) and price.as_of is None
    assert price.describe() == f"$0.2 in, $0.8 out per 1M tokens ({prices})"


@pytest.mark.parametrize("model", ["deepseek-chat", "qwen-vl-max"])
def test_a_dry_run_shows_the_price_it_counts_with_its_date_and_source(tmp_path: Path,
                                                                      model: str) -> None:
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(2))
    proc = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--model", model, "--dry-run",
                   "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    price = BUILT_IN[model]
    assert plan["prices"] == {model: price.describe()}
    assert price.as_of is not None and price.as_of in plan["prices"][model]
    assert plan["unpriced_models"] == []
    text = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--model", "my-own-vlm", "--dry-run",
                   cwd=tmp_path).stdout
    assert "no price for: my-own-vlm: its cost will show as unknown" in text


def test_the_docs_table_gives_each_providers_date_and_source() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "status-and-reports.md").read_text()
    for provider in PROVIDERS:
        row = next((line for line in page.splitlines()
                    if line.startswith("|") and provider.source in line), None)
        assert row is not None, provider.name
        assert f"| {provider.as_of} |" in row, provider.name
