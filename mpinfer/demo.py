"""``--demo``: the whole job on bundled tasks against the local mock, then status and validate.

The example images are generated here (small PNGs written with zlib), so the
demo needs no files, no key and no network beyond 127.0.0.1.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import orjson

from .config import RunConfig
from .mockserver import MockServerProcess

DEMO_DIR = Path("mpinfer-demo")
_COLOURS = {"red": (220, 40, 40), "green": (40, 180, 70), "blue": (40, 80, 220)}


def png_bytes(width: int, height: int, rgb: tuple[int, int, int],
              stripe: tuple[int, int, int]) -> bytes:
    """A valid RGB PNG: a solid colour with a diagonal stripe, so no two demo images look alike."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        for x in range(width):
            rows.extend(stripe if abs(x - y) < 3 else rgb)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(rows))) + chunk(b"IEND", b""))


def write_demo_tasks(folder: Path) -> Path:
    """Images under ``folder/img`` and a tasks.jsonl that uses them; returns the tasks file."""
    images = folder / "img"
    images.mkdir(parents=True, exist_ok=True)
    for name, rgb in _COLOURS.items():
        (images / f"{name}.png").write_bytes(png_bytes(64, 48, rgb, (255, 255, 255)))
    tasks = []
    for n in range(24):
        name = list(_COLOURS)[n % 3]
        task: dict[str, object] = {"id": f"demo-{n:02d}",
                                   "prompt": f"Task {n}: what colour fills this image?"}
        if n % 4 == 3:
            task["prompt"] = f"Task {n}: name a colour that is not in the rainbow."
        elif n % 5 == 4:
            task["images"] = [f"img/{name}.png", "img/blue.png"]
            task["prompt"] = f"Task {n}: do these two images share a colour?"
        else:
            task["images"] = f"img/{name}.png"
        tasks.append(task)
    path = folder / "tasks.jsonl"
    path.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in tasks))
    return path


def demo_config(folder: Path, tasks: Path, base_url: str) -> RunConfig:
    """The demo's run: two workers, four requests each, a short backoff so that it ends in seconds;
    the rpm limit is above what the mock serves, there to be drawn in the report."""
    return RunConfig(input=tasks, output=folder / "results.jsonl", processes=2, concurrency=4,
                     rpm=1800, model="gpt-4o-mini", base_url=base_url,
                     api_keys=("demo-key-not-secret",), log_dir=folder / "logs", timeout=10.0,
                     retry_backoff=0.2)


def start_demo_server() -> MockServerProcess:
    """The mock server with a few injected 429s and 500s, so that the demo shows retries at work."""
    return MockServerProcess().start(latency_ms=150, jitter_ms=100, p500=0.08, p429=0.05,
                                     retry_after=0.2, seed=7)


def prepare_demo(folder: Path = DEMO_DIR) -> Path:
    """A fresh demo folder with its tasks and images; returns the tasks file."""
    shutil.rmtree(folder, ignore_errors=True)
    return write_demo_tasks(folder)
