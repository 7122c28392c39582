"""Set-up and entry for newcomers and CI: ``python3 dev.py demo`` or ``python3 dev.py test``.

Needs only python3: it makes ``.venv`` beside this file, installs mpinfer with its test extra into it (again
only when pyproject.toml changed), then runs the demo or the test suite inside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".mpinfer-installed"
# Each command is a list of steps, run in order until one fails; extra arguments go to the last step.
COMMANDS = {
    "demo": [["-m", "mpinfer", "--demo"]],
    # Lint and types first: they take seconds and name the line, the suite takes minutes. The suite runs in
    # two workers, one test file each at a time (a file's servers and clusters stay with it): most tests wait
    # on time (windows, outages, a Ray cluster), so two files at once halve the suite's wall time.
    "test": [["-m", "ruff", "check"], ["-m", "mypy"], ["-m", "pytest", "-q", "-n", "2", "--dist", "loadfile"]],
    "bench": [["bench/run_all.py"]],
}


def ensure_venv() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not PYTHON.exists():
        print(f"dev.py: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing mpinfer with its test, Ray, report and Parquet extras (a first time takes a minute "
          "or two)",
          flush=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-e", f"{ROOT}[test,ray,report,parquet]"], check=True)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python3 dev.py {{{'|'.join(COMMANDS)}}} [extra arguments]", file=sys.stderr)
        return 2
    ensure_venv()
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
