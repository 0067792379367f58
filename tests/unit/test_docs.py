"""The documentation cannot drift from the code: the tables the code defines are generated
(scripts/generate_docs.py), every RPC has its section with an example, links resolve, and the
README stays a ten-minute read. (The examples' answers are checked against a real server in
tests/integration/test_docs.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from credits.v1 import credits_pb2

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


def test_the_generated_tables_are_fresh():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_docs.py"),
                             "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_rpc_has_its_section_with_a_grpcurl_example():
    api = (ROOT / "docs" / "api.md").read_text()
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", api, re.M | re.S))
    for method in credits_pb2.DESCRIPTOR.services_by_name["CreditsService"].methods:
        assert method.name in sections, f"docs/api.md has no '## {method.name}'"
        assert f"credits.v1.CreditsService/{method.name}" in sections[method.name], method.name


def test_the_readme_is_a_ten_minute_read():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("document", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(document):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", document.read_text()):
        assert (document.parent / target).exists(), f"{document.name} links to {target}"
