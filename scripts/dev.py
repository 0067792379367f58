#!/usr/bin/env python3
"""One entry point for a fresh machine that has only python3:

    python3 scripts/dev.py serve [flags]        # install into .venv and run the service
    python3 scripts/dev.py test [pytest args]   # install with dev tools, run every test

It creates .venv (on Debian, whose python3 lacks ensurepip until python3-venv is installed,
it installs that package with apt-get when run as root), installs the project in editable
mode (serve with the walk-through's tools, grpcurl among them; test with every development
tool), and reinstalls only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
# The project's extras each command installs: serve the README walk-through's tools
# (grpcurl), test every development tool.
EXTRAS = {"serve": "tools", "test": "dev"}


def _run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT)


def _ensure_venv() -> None:
    if PYTHON.exists():
        return
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        return
    except (subprocess.CalledProcessError, OSError):
        shutil.rmtree(VENV, ignore_errors=True)
    # Debian's python3 has no ensurepip until python3-venv is installed.
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit("python3 cannot create a virtual environment: install python3-venv first")
    version = f"python3.{sys.version_info.minor}-venv"
    _run("apt-get", "update", "-qq")
    _run("apt-get", "install", "-y", "-qq", version)
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV)


def _ensure_installed(extras: str) -> None:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    stamp = VENV / f".installed-{extras or 'base'}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    target = f".[{extras}]" if extras else "."
    _run(PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", target)
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not argv or argv[0] not in ("serve", "test"):
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    _ensure_venv()
    _ensure_installed(EXTRAS[command])
    if command == "serve":
        env = dict(os.environ)
        if not any(name.startswith("CREDITS_AUTH_") for name in env) and not any(
                arg.startswith(("--auth", "--no-auth")) for arg in rest):
            # The quick start: no tokens to set up. The server refuses this off loopback.
            env["CREDITS_AUTH_DISABLED"] = "1"
            print("dev.py: authentication disabled for local development "
                  "(CREDITS_AUTH_DISABLED=1); see README 'Callers and tokens'", file=sys.stderr)
        os.execve(VENV / "bin" / "credits-service", ["credits-service", "serve", *rest], env)
    env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    os.chdir(ROOT)
    os.execve(PYTHON, [str(PYTHON), "-m", "pytest", *rest], env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
