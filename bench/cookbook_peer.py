"""The peer: a parallel request processor in the openai-cookbook's style (its
``api_request_parallel_processor``), written for this benchmark, not copied.

What makes it the cookbook's pattern: no SDK; one aiohttp session; a main loop that takes the next
request (a retry first, else a new line of the requests file), refills a requests-a-minute and a
tokens-a-minute budget, starts the request as a task when the budget allows, and sleeps 1 ms; each
request is posted with aiohttp's ``json=`` and its answer read with ``response.json()``; a failure
goes back to a retry queue until its attempts are spent; every result is appended to the output as
``[request, answer]`` by opening the file, ``json.dumps`` and a write; a status tracker counts.

Two things differ, both making it cheaper, so that a client that beats it beats the cookbook: its
token count is a length estimate, not tiktoken (whose table this machine cannot download), and it
logs at WARNING (the cookbook's default, INFO, writes a line for every request). And one is added
so that it is compared at a chosen number in flight: ``--max_in_flight``, which the main loop
checks beside the budgets (the cookbook's own limit is its budget, which starts full).

    python bench/cookbook_peer.py --requests_filepath reqs.jsonl --save_filepath out.jsonl \\
        --request_url http://127.0.0.1:8000/v1/chat/completions --max_in_flight 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

LOOP_SLEEP_S = 0.001  # the main loop's nap: at most about 1,000 requests started a second
PAUSE_AFTER_429_S = 15.0


@dataclass
class Progress:
    """What the run has done so far; it ends when nothing is in progress."""

    started: int = 0
    in_progress: int = 0
    succeeded: int = 0
    failed: int = 0
    rate_limited: int = 0
    api_errors: int = 0
    other_errors: int = 0
    last_rate_limit_at: float = 0.0


@dataclass
class Job:
    """One request, its token estimate, attempts left and what its attempts said."""

    number: int
    body: dict[str, Any]
    tokens: int
    attempts_left: int
    said: list[Any] = field(default_factory=list)

    async def send(self, session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                   retries: asyncio.Queue[Job], out_path: str, progress: Progress) -> None:
        """Post the request; save the answer, or queue it again (or save the failure)."""
        problem: Any = None
        answer: Any = None
        try:
            async with session.post(url, headers=headers, json=self.body) as reply:
                answer = await reply.json(content_type=None)
            if isinstance(answer, dict) and "error" in answer:
                problem = answer
                if reply.status == 429:
                    progress.last_rate_limit_at = time.time()
                    progress.rate_limited += 1
                else:
                    progress.api_errors += 1
        except Exception as exc:  # (the pattern keeps whatever went wrong, and retries)
            logging.warning("request %d: %s", self.number, exc)
            progress.other_errors += 1
            problem = exc
        if problem is not None:
            self.said.append(problem)
            if self.attempts_left:
                retries.put_nowait(self)
                return
            save([self.body, [str(p) for p in self.said]], out_path)
            progress.failed += 1
        else:
            save([self.body, answer], out_path)
            progress.succeeded += 1
        progress.in_progress -= 1


def save(record: Any, path: str) -> None:
    """Append one result to the JSONL output, as the cookbook does: open, dump, write."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def estimate_tokens(body: dict[str, Any]) -> int:
    """Prompt plus the answer allowed: a characters-over-four estimate of the messages' text."""
    text = sum(len(str(m.get("content", ""))) for m in body.get("messages", ()))
    return text // 4 + 4 * len(body.get("messages", ())) + int(body.get("max_tokens") or 15)


async def process(requests_path: str, out_path: str, url: str, api_key: str, rpm: float,
                  tpm: float, max_in_flight: int, attempts: int) -> Progress:
    """Send every request of the file, within the budgets and at most ``max_in_flight`` at once."""
    headers = {"api-key": api_key} if "/deployments" in url else {
        "Authorization": f"Bearer {api_key}"}
    retries: asyncio.Queue[Job] = asyncio.Queue()
    progress = Progress()
    requests_left, tokens_left, refilled = rpm, tpm, time.time()
    waiting: Job | None = None
    more = True
    numbers = iter(range(1 << 62))
    running: set[asyncio.Task[None]] = set()
    with open(requests_path) as lines:
        async with aiohttp.ClientSession() as session:
            while True:
                if waiting is None:
                    if not retries.empty():
                        waiting = retries.get_nowait()
                    elif more:
                        line = next(lines, None)
                        if line is None:
                            more = False
                        else:
                            body = json.loads(line)
                            waiting = Job(next(numbers), body, estimate_tokens(body), attempts)
                            progress.started += 1
                            progress.in_progress += 1
                now = time.time()
                requests_left = min(rpm, requests_left + rpm * (now - refilled) / 60.0)
                tokens_left = min(tpm, tokens_left + tpm * (now - refilled) / 60.0)
                refilled = now
                sending = progress.in_progress - (waiting is not None) - retries.qsize()
                if (waiting is not None and requests_left >= 1 and tokens_left >= waiting.tokens
                        and sending < max_in_flight):
                    requests_left -= 1
                    tokens_left -= waiting.tokens
                    waiting.attempts_left -= 1
                    task = asyncio.create_task(waiting.send(session, url, headers, retries,
                                                            out_path, progress))
                    running.add(task)  # (the loop keeps only a weak reference to a task)
                    task.add_done_callback(running.discard)
                    waiting = None
                if progress.in_progress == 0:
                    break
                await asyncio.sleep(LOOP_SLEEP_S)
                since = time.time() - progress.last_rate_limit_at
                if since < PAUSE_AFTER_429_S:
                    await asyncio.sleep(PAUSE_AFTER_429_S - since)
    return progress


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests_filepath", required=True)
    ap.add_argument("--save_filepath", required=True)
    ap.add_argument("--request_url", default="https://api.openai.com/v1/chat/completions")
    ap.add_argument("--api_key", default=os.getenv("OPENAI_API_KEY", ""))
    ap.add_argument("--max_requests_per_minute", type=float, default=1e9)
    ap.add_argument("--max_tokens_per_minute", type=float, default=1e12)
    ap.add_argument("--max_in_flight", type=int, default=100)
    ap.add_argument("--max_attempts", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    progress = asyncio.run(process(args.requests_filepath, args.save_filepath, args.request_url,
                                   args.api_key, args.max_requests_per_minute,
                                   args.max_tokens_per_minute, args.max_in_flight,
                                   args.max_attempts))
    if progress.failed:
        logging.warning("%d of %d requests failed", progress.failed, progress.started)
    return 0 if progress.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
