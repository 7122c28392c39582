"""Set-up and entry for newcomers and CI: ``python3 dev.py demo`` or ``python3 dev.py test``.

Needs only python3: it makes ``.venv`` beside this file, installs mpinfer with the extras the
command needs into it (again only when pyproject.toml changed or the command needs more), then runs
the command inside it. ``test`` also brings the two real third-party programs its tests meet: the
LiteLLM proxy (the ``interop`` extra, into the venv) and Debian's chromium for the report's browser
test (with apt-get, when missing and run as root; otherwise that test is skipped and this says so).
CI's ``.ci/run`` is just ``python3 dev.py test``: what CI installs, a newcomer's run installs too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".mpinfer-installed"
# Each command is a list of steps, run in order until one fails; extra
# arguments go to the last step.
COMMANDS = {
    "demo": [["-m", "mpinfer", "--demo"]],
    # Lint and types first: they take seconds and name the line, the suite takes minutes. The suite
    # runs in two workers, one test file each at a time (a file's servers and clusters stay with
    # it): most tests wait on time (windows, outages, a Ray cluster), so two files at once halve the
    # suite's wall time.
    "test": [["-m", "ruff", "check"], ["-m", "mypy"],
             ["-m", "pytest", "-q", "-n", "2", "--dist", "loadfile"]],
    "bench": [["bench/run_all.py"]],
}
# The extras each command installs (a venv made for one command gains the others' when they run).
EXTRAS = {"demo": {"report", "images"},
          "test": {"test", "ray", "report", "parquet", "images", "interop"},
          "bench": {"test", "ray", "report", "parquet", "images"}}


def ensure_venv(extras: set[str]) -> None:
    """Make ``.venv`` (once) and install mpinfer with ``extras`` into it, unless it has them."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    try:
        stamp = json.loads(STAMP.read_text())
        if PYTHON.exists() and stamp["pyproject"] == wanted and extras <= set(stamp["extras"]):
            return
        extras = extras | set(stamp["extras"]) if stamp["pyproject"] == wanted else extras
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not PYTHON.exists():
        print(f"dev.py: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    names = ",".join(sorted(extras))
    print(f"dev.py: installing mpinfer[{names}] (a first time takes a minute or two)", flush=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-e", f"{ROOT}[{names}]"], check=True)
    STAMP.write_text(json.dumps({"pyproject": wanted, "extras": sorted(extras)}))


def ensure_browser() -> None:
    """Debian's chromium for the report's browser test: apt-get installs it when allowed."""
    if shutil.which("chromium"):
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("dev.py: installing Debian's chromium for the browser test", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "chromium"]
        done = (subprocess.call(["apt-get", "update", "-qq"], env=env) == 0
                and subprocess.call(install, env=env, stdout=subprocess.DEVNULL) == 0)
        if done and shutil.which("chromium"):
            return
    print("dev.py: no chromium (Debian: apt-get install chromium); the "
          "report's browser test will be skipped", flush=True)


def main(argv: list[str]) -> int:
    """Run the steps of ``argv``'s command (demo, test, bench) in the venv; the first failure's exit
    code."""
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python3 dev.py {{{'|'.join(COMMANDS)}}} [extra arguments]", file=sys.stderr)
        return 2
    ensure_venv(EXTRAS[argv[0]])
    if argv[0] == "test":
        ensure_browser()
    os.chdir(ROOT)
    *first, last = COMMANDS[argv[0]]
    steps = [*first, [*last, *argv[1:]]]
    for step in steps:
        if len(steps) > 1:
            print(f"dev.py: python {' '.join(step)}", flush=True)
        code = subprocess.call([str(PYTHON), *step])
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
