"""The toolchain gates CI runs with the suite: buf lint and format, generated code fresh, ruff."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: install the dev extras (pip install -e .[dev])")
    return path


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint_passes():
    result = _run(_tool("buf"), "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_protos_are_buf_formatted():
    result = _run(_tool("buf"), "format", "--diff", "--exit-code")
    assert result.returncode == 0, "run `buf format -w`:\n" + result.stdout + result.stderr


def test_generated_code_matches_the_protos(tmp_path):
    """Regenerate into a copy of the repository and compare with the committed generated/."""
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "generate_protos.py", copy / "scripts")
    shutil.copytree(ROOT / "protos", copy / "protos")
    result = _run(sys.executable, str(copy / "scripts" / "generate_protos.py"), cwd=copy)
    assert result.returncode == 0, result.stdout + result.stderr
    differences = _differences(filecmp.dircmp(ROOT / "generated", copy / "generated",
                                              ignore=["__pycache__"]))
    assert not differences, (
        "generated/ is stale: run `python scripts/generate_protos.py` and commit the result\n"
        + "\n".join(differences)
    )


def _differences(comparison: filecmp.dircmp[str], prefix: str = "") -> list[str]:
    found = [f"only in committed: {prefix}{name}" for name in comparison.left_only]
    found += [f"only in regenerated: {prefix}{name}" for name in comparison.right_only]
    _, mismatch, errors = filecmp.cmpfiles(comparison.left, comparison.right,
                                           comparison.common_files, shallow=False)
    found += [f"differs: {prefix}{name}" for name in mismatch + errors]
    for name, sub in comparison.subdirs.items():
        found += _differences(sub, f"{prefix}{name}/")
    return found


def test_ruff_passes():
    result = _run(_tool("ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_imports_keep_the_layers():
    """transport and workers -> service -> persistence -> domain, never upward; the domain
    pure; no protobuf below transport; no SQLAlchemy above persistence (pyproject.toml)."""
    result = _run(_tool("lint-imports"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_of_the_service_is_installed_by_pip():
    """pyproject.toml lists the packages a wheel installs; the editable install of the test
    environment finds every package anyway, so a new one missing from the list would only
    break `pip install .`."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    found = {".".join(path.parent.relative_to(ROOT).parts)
             for path in (ROOT / "credits_service").rglob("__init__.py")}
    assert found <= listed, f"missing from [tool.setuptools] packages: {sorted(found - listed)}"
