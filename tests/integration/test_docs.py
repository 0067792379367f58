"""The documents' examples, run as written against a fresh `credits-service serve` each: every
grpcurl command answers what the document shows (but for ids and times), and the README's
Python example runs."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import pytest

from scripts.doc_examples import run_document, serve_flags
from tests.serve_launcher import REPO_ROOT, Launcher

DOCUMENTS = ["README.md", "docs/api.md", "docs/lots.md", "docs/accounts.md", "docs/rates.md",
             "docs/subscriptions.md", "docs/organizations.md"]


@pytest.mark.parametrize("document", DOCUMENTS)
async def test_the_examples_answer_what_the_document_shows(launcher: Launcher, document: str):
    flags = serve_flags((REPO_ROOT / document).read_text())
    server = launcher.serve(launcher.data_dir(), "--auth-disabled", *flags)
    await server.wait_serving()
    problems = await asyncio.to_thread(run_document, REPO_ROOT / document, server.address)
    assert not problems, "\n".join(problems)
    if document == "README.md":
        await _run_the_python_example(server.address)


async def _run_the_python_example(address: str) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True,
        timeout=60, env={**os.environ, "CREDITS_TARGET": address,
                         "PYTHONPATH": str(REPO_ROOT / "client")})
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"balance after: \d+\n", result.stdout), result.stdout
