"""``MockServerProcess``: the mock server in a subprocess, started and controlled over HTTP."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from types import TracebackType
from typing import IO, Any, NoReturn, Self

from .cli import READY_PREFIX
from .config import MockConfig


class MockServerProcess:
    """Run the mock server in a subprocess, for tests, ``--demo`` and benchmarks.

    A separate process keeps the server off the client's event loop and GIL,
    so measurements and timeouts behave as they would against a real API.

    Usage::

        with MockServerProcess().start(latency_ms=20, p500=0.1) as mock:
            client = openai.OpenAI(base_url=mock.base_url, api_key="test")
            ...
            print(mock.stats()["outcomes"])
    """

    def __init__(self, *, ready_timeout_s: float = 15.0, control_timeout_s: float = 10.0) -> None:
        """Prepare (but do not start) a server process; timeouts bound every wait."""
        self.ready_timeout_s = ready_timeout_s
        self.control_timeout_s = control_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._base_url: str | None = None
        self._port: int | None = None
        self._last_stderr = ""
        # Control calls must never go through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- lifecycle -------------------------------------------------------------

    def start(self, **config_overrides: Any) -> Self:
        """Spawn the server with MockConfig overrides and wait for MOCK_READY.

        Calling it on a running helper stops that server and starts a new one (new port) with the
        given overrides. Raises TypeError for unknown option names, ValueError for invalid values,
        and RuntimeError (including the server's stderr) when it does not come up within
        ``ready_timeout_s``.
        """
        names = {f.name for f in dataclasses.fields(MockConfig)}
        unknown = sorted(set(config_overrides) - names)
        if unknown:
            raise TypeError(f"unknown mock server options: {unknown}")
        config = MockConfig(**config_overrides)  # validate before spawning
        if config.host != "127.0.0.1":
            raise ValueError("the mock server helper only binds to 127.0.0.1")
        if any("," in key for key in config.keys):
            raise ValueError("keys cannot contain ',' (they are passed comma-separated)")
        if self._proc is not None:
            # Both `with MockServerProcess() as s: s.start(...)` and
            # `with MockServerProcess().start(...) as s:` are natural; in the
            # first, __enter__ already started a default server, so replace it.
            self.stop()
            self._proc = None
            self._base_url = None
            self._port = None
        cmd = [sys.executable, *_server_entry(), "--exit-with-parent", *_config_to_argv(config)]
        env = dict(os.environ)
        # Make the package importable in the child even when it is not
        # installed (tests run from a checkout): the child runs it with ``-m``.
        # This file is <root>/mpinfer/mock/process.py.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", ""))
                                            if p)
        # Kept open for the process lifetime (closed in stop()), so no `with`.
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
            close_fds=True
        )
        line = self._read_ready_line()
        prefix = f"{READY_PREFIX} "
        if line is None or not line.startswith(prefix):
            reason = "timed out" if line is None else f"unexpected first line {line!r}"
            self._fail(reason)
        url = line[len(prefix):].strip()
        self._base_url = url
        self._port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        return self

    def _read_ready_line(self) -> str | None:
        """First stdout line, or None on timeout/EOF; a thread keeps this portable."""
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        lines: queue.Queue[bytes] = queue.Queue(maxsize=1)
        threading.Thread(target=lambda: lines.put(stdout.readline()), name="mock-ready",
                         daemon=True).start()
        try:
            raw = lines.get(timeout=self.ready_timeout_s)
        except queue.Empty:
            return None
        return raw.decode("utf-8", "replace").strip() if raw else None

    def _fail(self, reason: str) -> NoReturn:
        exit_code = self._proc.poll() if self._proc is not None else None
        self.stop()
        stderr = self._read_stderr()
        raise RuntimeError(
            f"mock server failed to start ({reason}; exit code "
            f"{exit_code}). stderr:\n{stderr or '<empty>'}"
        )

    def _read_stderr(self) -> str:
        if self._stderr is None or self._stderr.closed:
            return self._last_stderr
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate (then kill after ``timeout_s``) and reap the server; idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
        if self._stderr is not None and not self._stderr.closed:
            self._last_stderr = self._read_stderr()
            self._stderr.close()

    def __enter__(self) -> Self:
        """Start a default server unless ``start()`` was already called."""
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- properties ------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """OpenAI base URL of the running server, e.g. ``http://127.0.0.1:PORT/v1``."""
        if self._base_url is None:
            raise RuntimeError("mock server not started")
        return self._base_url

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (for the ``/_mock/*`` control endpoints)."""
        return self.base_url[: -len("/v1")]

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError("mock server not started")
        return self._port

    @property
    def pid(self) -> int:
        """Process id of the server."""
        if self._proc is None:
            raise RuntimeError("mock server not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once stopped, else None."""
        return None if self._proc is None else self._proc.poll()

    @property
    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far (diagnostics for failing tests)."""
        return self._read_stderr()

    # -- control API -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """GET /_mock/stats."""
        return self._call("GET", "/_mock/stats")

    def configure(self, **settings: Any) -> dict[str, Any]:
        """POST /_mock/config with ``settings``; returns the new public config."""
        return self._call("POST", "/_mock/config", settings)

    def batch_faults(self, **settings: Any) -> dict[str, Any]:
        """POST /_mock/batches: the Batch API's faults (mock/batch_faults.py); the batch_stats()."""
        return self._call("POST", "/_mock/batches", settings)

    def batch_stats(self) -> dict[str, Any]:
        """GET /_mock/batches: batches created; per custom_id, how often held and answered."""
        return self._call("GET", "/_mock/batches")

    def reset(self, *, settings: bool = False) -> None:
        """POST /_mock/reset: zero counters, windows and scripts; with ``settings``, settings too.

        Every setting goes back to the server's start (MockConfig's defaults unless ``start``
        changed them) and every revoked key is accepted again.
        """
        self._call("POST", "/_mock/reset", {"settings": settings})

    def outage(self, seconds: float) -> None:
        """POST /_mock/outage: the server stops listening for ``seconds``
        (connections refused), then listens again on the same port with its counters
        and settings; the control API is away too."""
        self._call("POST", "/_mock/outage", {"seconds": seconds})

    def _call(self, method: str, path: str, payload: Any = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.root_url + path, data=data, method=method,
            headers={"content-type": "application/json"}
        )
        try:
            with self._opener.open(request, timeout=self.control_timeout_s) as response:
                result: dict[str, Any] = json.loads(response.read())
                return result
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise RuntimeError(
                f"mock control call {method} {path} failed: {exc.code} {detail}"
            ) from None


def _server_entry() -> list[str]:
    """Interpreter arguments that run the mock server's ``main`` (``mpinfer/mock/__main__.py``).

    The test suite starts dozens of servers, so start-up must stay cheap. ``-m mpinfer.mock``
    imports the package ``__init__`` (names load lazily there, so the openai client, slow to
    import, is not imported) and ``mpinfer.mock``, whose ``__init__`` imports
    nothing; the child then loads only the stdlib-only serving modules, not this helper's imports.
    ``-P`` keeps the working directory off ``sys.path`` so files there cannot shadow stdlib
    modules.
    """
    return ["-P", "-m", "mpinfer.mock"]


def _config_to_argv(config: MockConfig) -> list[str]:
    """Command-line arguments reproducing ``config`` (only non-default values)."""
    default = MockConfig()
    argv: list[str] = []
    for f in dataclasses.fields(MockConfig):
        value = getattr(config, f.name)
        if value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, dict):  # model_map, reasoning_models
            argv.append(flag)
            argv.extend(f"{src}={dst}" for src, dst in value.items())
        elif f.name in ("keys", "answer_labels", "label_models"):  # comma-separated on the line
            argv += [flag, ",".join(value)]
        elif isinstance(value, bool):
            argv.append(flag)  # a store_true switch: only ever differs from its default by being on
        else:
            argv += [flag, str(value)]
    return argv
