"""Text renderings of what the library returns: run summaries, status,
validation, export, repair. Lines, not prints."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .summary import RunSummary

# Types only: importing the dry run would load the openai package for every --status, and the
# reports' modules would cost every run's start.
if TYPE_CHECKING:
    from ..cancel import CancelResult
    from ..store.repair import RepairReport
    from .dryrun import DryRunPlan
    from .export import ExportReport
    from .groups import GroupRow
    from .html import ReportResult
    from .status import StatusReport
    from .validate import ValidationReport


def duration(seconds: float | None) -> str:
    """Seconds as ``1h05m`` or ``4m09s``; ``-`` for None."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def money(value: float | None, unpriced: int = 0, no_usage: int = 0,
          unpriced_models: Sequence[str] = ()) -> str:
    """Dollars to four places, saying how many answers had no known price or no usage: an
    unknown cost is never shown as a known one, nor as $0 when nothing could be priced."""
    if value is None:
        return "-"
    names = ", ".join(unpriced_models) or "their model"
    if unpriced and not value:
        return f"unknown: no price for {names}" + (
            f" ({no_usage} answers without usage)" if no_usage else "")
    notes = [f"{unpriced} answers with no price for {names}" if unpriced else "",
             f"{no_usage} answers without usage" if no_usage else ""]
    note = " and ".join(n for n in notes if n)
    return f"${value:.4f}" + (f" ({note} not counted)" if note else "")


def _latency(values: dict[str, Any]) -> str:
    if not values or values.get("p50") is None:
        return "-"
    return f"p50 {values['p50']:.2f}s, p95 {values['p95']:.2f}s, max {values['max']:.2f}s"


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "-"


def summary_lines(summary: RunSummary) -> list[str]:
    """The end-of-run summary the CLI prints: progress, this run's counts, cost and limits."""
    data = summary.to_dict(live=False)
    rate = data["requests_per_s"]
    success = f"{summary.success_rate:.1%}" if summary.success_rate is not None else "-"
    lines = [
        f"done {summary.done}/{summary.total} ({summary.already_done} before this run, "
        f"{summary.succeeded + summary.recovered} now), failed {summary.failed}, left "
        f"{summary.remaining}",
        f"this run: {summary.elapsed_s:.1f}s, {summary.requests} requests"
        f"{f' ({rate:.1f}/s)' if rate else ''}, success {success}, "
        f"{summary.prompt_tokens} tokens in, {summary.completion_tokens} out, "
        f"cost {money(summary.cost, summary.unpriced, summary.no_usage, summary.unpriced_models)}",
        (f"batches took {_latency(data['batch_s'])} (an answer in a batch has no latency of "
         "its own); " if summary.batch_durations else
         f"latency {_latency(data['latency_s'])}; waited {_latency(data['waited_s'])}; ")
        + f"429s {summary.rate_limited}; "
        f"retries {sum(summary.retries_by_type.values())}"
        + (f" ({_kinds(summary.retries_by_type)})" if summary.retries_by_type else ""),
    ]
    if summary.limits or summary.limited_s or summary.outage_s:
        unreachable = f"; server unreachable {summary.outage_s:.1f}s" if summary.outage_s else ""
        lines.append(f"limits: {summary.limits or 'none'}; waited on them "
                     f"{summary.limited_s:.1f}s of {summary.elapsed_s:.1f}s{unreachable}")
    if summary.refusals or summary.truncated or summary.filtered:
        lines.append(f"refusals {summary.refusals} (kept as \"refusal\", answer null), "
                     f"filtered {summary.filtered} (kept as \"filtered\"), "
                     f"truncated at max_tokens {summary.truncated}")
    if summary.no_usage:
        lines.append(f"without usage: {summary.no_usage} answers (tokens and cost unknown, not in "
                     f"the cost; estimated at ${summary.estimated_cost:.4f} for --max-cost)")
    if summary.model_mismatches:
        where = ", ".join(f"{place} ({count})" if len(summary.mismatch_endpoints) > 1 else place
                          for place, count in summary.mismatch_endpoints.items())
        lines.append("answered by another model than requested: "
                     f"{summary.model_mismatches}{f' at {where}' if where else ''} "
                     "(see --validate; --strict-model fails them)")
    if summary.failures_by_type:
        lines.append(f"failures by type: {_kinds(summary.failures_by_type)} "
                     "(details in the errors file; a rerun retries them)")
    for message in summary.unknown_models.values():
        if summary.stopped is None or message not in str(summary.stopped):
            lines.append(f"not sent: {message}")
    if summary.stopped:
        lines.append(f"stopped: {summary.stopped}")
    if summary.remaining and not summary.stopped:
        lines.append("rerun the same command to retry what is left")
    epilogue = summary.epilogue
    if epilogue is not None and epilogue.missing_file is not None:
        lines.append(f"the {epilogue.missing_tasks} tasks neither answered nor "
                     f"failed are in {epilogue.missing_file}")
    if epilogue is not None and epilogue.report_file is not None:
        lines.append(f"report: {epilogue.report_file}")
    if summary.log_file:
        lines.append(f"log: {summary.log_file}")
    for judged in summary.judged:  # --judge: each judging run after the answers
        # its counts and cost; its latencies, limits and log are in its own summary file and log
        lines += ["judge:", *(f"  {line}" for line in summary_lines(judged)[:2])]
    return lines


def status_lines(report: StatusReport) -> list[str]:
    """``--status`` as the CLI prints it: one row a fact, then per-model and per-key counts."""
    live = f"yes (pid {report.live_pid})" if report.live else "no"
    last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report.last_written_at)) \
        if report.last_written_at else "-"
    rate = f"{report.recent_per_s:.2f} tasks/s" if report.recent_per_s else "-"
    rows: list[tuple[str, object]] = [
        ("input", report.input), ("output", report.output), ("total", report.total),
        ("done", f"{report.done} ({report.percent:.1f}%)"),
        ("failed", f"{report.failed} ({_kinds(report.failures_by_type)})" if report.failed else 0),
        ("pending", f"{report.pending} (not done, failed included)"),
        ("tokens",
         f"{report.total_tokens} ({report.prompt_tokens} in, {report.completion_tokens} out)"),
        ("cost", money(report.cost, report.unpriced, report.no_usage, report.unpriced_models)),
        ("latency", _latency(report.latency_s) + (" (answers of a batch: its duration)"
                                                  if report.batches else "")),
        ("waited", "-" if report.waited_s is None
         else f"{report.waited_s:.2f}s a task on average (limits, a slot, backoff)"),
        ("recent rate", rate), ("ETA", duration(report.eta_s)), ("last write", last),
        ("run live", live),
        ("429s", report.rate_limited),
    ]
    if report.limits:
        rows.append(("limits", f"{report.limits}; waited on them {report.limited_s:.1f}s"))
    if report.waiting_for_server_since:
        rows.append(("server", f"waiting for the server since {report.waiting_for_server_since}"))
    if report.refusals:
        rows.append(("refusals",
                     f"{report.refusals} (done: the refusal text is the answer's \"refusal\")"))
    if report.filtered:
        rows.append(("filtered",
                     f"{report.filtered} (done: the content filter's verdict is in \"filtered\")"))
    if report.no_usage:
        rows.append(("no usage",
                     f"{report.no_usage} answers came without usage (cost unknown, not counted)"))
    if report.truncated:
        rows.append(("truncated", f"{report.truncated} answers cut off at max_tokens"))
    if report.model_mismatches:
        rows.append(("other model",
                     f"{report.model_mismatches} answers by another model than requested"))
    if report.bad_lines:
        rows.append(("bad lines", f"{report.bad_lines} (see --validate)"))
    if report.unknown_ids:
        rows.append(("unknown ids", f"{report.unknown_ids} (see --validate)"))
    lines = [f"{name:>12}: {value}" for name, value in rows]
    if len(report.models) > 1:
        lines.append("  per output: done / failed / pending / cost")
        lines += [f"    {part.output}: {part.done} / {part.failed} / "
                  f"{part.pending} / {money(part.cost, part.unpriced, 0, part.unpriced_models)}"
                  for part in report.models]
    for title, usage in (("per model", report.per_model), ("per key", report.per_key)):
        if len(usage) > 1 or any(u.get("rate_limited") for u in usage.values()):
            lines.append(f"  {title}: requests / tokens / 429s")
            for name, counts in usage.items():
                off = " (disabled)" if counts.get("disabled") else ""
                lines.append(f"    {name}: {counts.get('requests', 0)} / "
                             f"{counts.get('tokens', 0)} / {counts.get('rate_limited', 0)}{off}")
    if report.batches:
        lines.append("  batches: id / state / completed+failed of rows / age (duration once "
                     "ended) / attempt")
        for b in report.batches:
            state = b.status if b.batch_id else b.state
            extra = f"; waiting: {b.waiting}" if b.waiting else ""
            extra += f"; {b.resubmitted} rows resubmitted" if b.resubmitted else ""
            extra += f"; at {b.endpoint}" if b.endpoint else ""
            lines.append(f"    {b.batch_id or b.name}: {state} / {b.completed}+{b.failed} of "
                         f"{b.rows} / {duration(b.age_s)} / {b.attempt}{extra}")
    if report.groups is not None:
        lines += group_lines(report.groups)
    return lines


def _share(row: GroupRow, count: int | None = None, label: str = "") -> str:
    share = row.label_share(label) if count is None else row.share(count)
    return "-" if share is None else f"{100 * share:.1f}%"


def group_lines(rows: list[GroupRow]) -> list[str]:
    """Results by group as a table: a row per value of the field and (variant, model); refusals,
    filtered and each label as a share of the tasks done (answered, refused or filtered); "-" for
    the labels of a group none of whose tasks has one."""
    if not rows:
        return ["  by: no groups (no tasks selected)"]
    labels = sorted({label for row in rows for label in row.labels})
    variants = any(row.variant is not None for row in rows)
    head = [rows[0].by, *(["variant"] if variants else []), "model", "tasks", "done", "refused",
            "filtered", "failed", *labels, "cost"]
    table = [head]
    for row in rows:
        table.append([row.shown_value, *([row.variant or "-"] if variants else []), row.model,
                      str(row.tasks), str(row.done), _share(row, row.refused),
                      _share(row, row.filtered), str(row.failed),
                      *(_share(row, label=label) for label in labels),
                      money(row.cost)])
    widths = [max(len(line[n]) for line in table) for n in range(len(head))]
    texts = 2 if variants else 1  # left-aligned: the value and the variant; then the model
    return [f"  by {rows[0].by}: refused, filtered and labels as shares of the tasks done"] + [
        "    " + "  ".join(cell.ljust(width) if n <= texts else cell.rjust(width)
                           for n, (cell, width) in enumerate(zip(line, widths, strict=True)))
        for line in table]


def validation_lines(report: ValidationReport) -> list[str]:
    """``--validate`` as the CLI prints it: counts of each problem, with examples."""
    lines = [f"{report.output}: {report.lines} lines, {report.records} records"]
    if report.refusals or report.truncated or report.filtered:
        lines.append(f"refusals {report.refusals}, filtered {report.filtered}, truncated at "
                     f"max_tokens {report.truncated} (not problems)")
    if report.ok:
        lines.append("ok: every line parses, no duplicates, every input id "
                     "answered, answers and models as asked")
        return lines
    for kind, count in report.counts.items():
        lines.append(f"{kind.value}: {count}")
        for problem in report.examples.get(kind, []):
            where = f"line {problem.line}" if problem.line else "input"
            ident = f" id {problem.id!r}" if problem.id is not None else ""
            lines.append(f"  {where}{ident}: {problem.message}")
    return lines


def _cost_range(low: float | None, high: float | None) -> str:
    return "no price known" if low is None or high is None else f"${low:.4f} to ${high:.4f}"


def dry_run_lines(plan: DryRunPlan) -> list[str]:
    """``--dry-run`` as the CLI prints it: tasks, images, tokens and the cost range."""
    totals = plan.totals
    images = plan.images
    prompt = plan.prompt
    lines = [
        f"dry run of {plan.input}: nothing was sent",
        f"tasks: {plan.tasks} in the input, {totals.done} done, {totals.pending} to send "
        f"(task x model), {totals.problems} would fail: {plan.problem_count} "
        f"{'task' if plan.problem_count == 1 else 'tasks'} with problems",
        f"images: {images.local} files, {images.inline} inline, {images.remote} remote (not "
        f"checked), {images.local_bytes / 1e6:.1f} MB before base64",
    ]
    if images.largest is not None:
        big = images.largest
        lines.append(f"largest image: {big.path} ({big.bytes / 1e6:.2f} MB, "
                     f"{big.width}x{big.height}, task {big.task_id})")
    if prompt.tasks:
        lines.append(f"prompt tokens (estimate): {prompt.total} in all; per task min {prompt.min}, "
                     f"mean {prompt.mean:.0f}, max {prompt.max}")
    ceiling = " (no max_tokens set: 256 assumed per answer)" if plan.max_tokens_assumed else ""
    lines.append(f"answer tokens at most: {totals.completion_ceiling}{ceiling}")
    for row in plan.rows:
        lines.append(f"  {row.model} -> {row.output}: {row.done} done, {row.pending} to send, "
                     f"~{row.prompt_tokens} prompt tokens, cost "
                     f"{_cost_range(row.cost_min, row.cost_max)}")
    lines.append(f"estimated cost: {_cost_range(totals.cost_min, totals.cost_max)} "
                 "(prompts only, to prompts plus every answer at max_tokens)")
    if plan.batch:
        batch_cost = _cost_range(totals.batch_cost_min, totals.batch_cost_max)
        lines.append(f"at the Batch API price (--backend batch): {batch_cost} "
                     "(the online price is the line above)")
    for name, price in plan.prices:
        lines.append(f"price of {name}: {price}")
    if plan.unpriced_models:
        lines.append(f"no price for: {', '.join(plan.unpriced_models)}: its cost will show as "
                     "unknown (give --prices or --price-input/-output)")
    for problem in plan.problems:
        lines.append(f"  problem: line {problem.line}, id {problem.id!r}: {problem.message}")
    if plan.problem_count > len(plan.problems):
        lines.append(f"  ... and {plan.problem_count - len(plan.problems)} more")
    return lines


def export_lines(report: ExportReport) -> list[str]:
    """``--export`` as the CLI prints it, and where the missing tasks went."""
    refused = f", refused {report.refused}" if report.refused else ""
    refused += f", filtered {report.filtered}" if report.filtered else ""
    lines = [f"exported {report.rows} rows to {report.dest}: ok {report.ok}{refused}, "
             f"failed {report.failed}, missing {report.missing}"]
    if report.missing_tasks:
        lines.append(f"the {report.missing_tasks} tasks not answered nor failed are in "
                     f"{report.missing_file} (their input records): rerun the same command, or run "
                     "that file with -i (and --image-root set to the input's folder, for relative "
                     "image paths)")
    else:
        lines.append(f"no task missing ({report.missing_file} is empty)")
    return lines


def repair_lines(report: RepairReport) -> list[str]:
    """``--repair`` as the CLI prints it: what was removed, and where the old file is."""
    if not report.changed:
        what = f"{report.lines} lines" if report.lines else "no output file yet"
        return [f"{report.output}: {what}, nothing to repair"]
    removed = sum(report.removed.values())
    lines = [f"{report.output}: {report.lines} lines, kept {report.kept}, removed {removed}; "
             f"the old file is kept as {report.backup}"]
    for kind, count in report.removed.items():
        shown = ", ".join(str(n) for n in report.examples.get(kind, []))
        more = ", ..." if count > len(report.examples.get(kind, [])) else ""
        lines.append(f"  removed {kind.value}: {count} (line {shown}{more})")
    if report.newline_added:
        lines.append("  added the missing newline after the last record")
    return lines


def fresh_lines(backup: Path | None) -> list[str]:
    """``--fresh`` as the CLI prints it: where the earlier runs' files were moved."""
    if backup is None:
        return ["fresh start: no files of earlier runs to move"]
    return [f"fresh start: the files of earlier runs were moved to {backup}/ (nothing was deleted)"]


def report_lines(result: ReportResult) -> list[str]:
    """``--report`` as the CLI prints it: the page, its size and whether validate passed."""
    verdict = {True: "validate ok", False: "validate found problems",
               None: "not validated (no input)"}
    runs = f"{result.runs} run{'s' if result.runs != 1 else ''}"
    return [f"report: {result.path} ({result.bytes / 1e6:.1f} MB, {result.charts} charts, "
            f"{runs}, {result.lines} output lines, {verdict[result.valid]}; made in "
            f"{result.seconds:.1f}s): open it in a browser, it needs no network"]


def cancel_lines(result: CancelResult | None, output: Path | None) -> list[str]:
    """``--cancel`` as the CLI prints it: whether the run stopped, and how to resume."""
    if result is None:
        return [f"no run is live on {output}: nothing to stop"]
    if not result.exited:
        return [f"sent the run on {result.output} (pid {result.pid}) the stop signal; "
                f"it had not exited after {result.waited_s:.0f}s (requests still in "
                "flight): --status shows when it has"]
    lines = [f"stopped the run on {result.output} (pid {result.pid}) in {result.waited_s:.1f}s: it "
             "took no new task, and requests in flight finished or were left for the rerun"]
    data = result.summary or {}
    if "done" in data and "total" in data:
        lines.append(f"done {data['done']}/{data['total']}, failed {data.get('failed', 0)}, "
                     f"left {data.get('remaining', '?')}")
    lines.append("to resume: run the same command again (it goes on with what is left)")
    return lines
