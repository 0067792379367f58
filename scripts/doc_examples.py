#!/usr/bin/env python3
"""Run the grpcurl examples of a document against a fresh server, so the docs show what the
service really answers.

An example is a ```sh block followed at once by an output block (```json, or a plain ``` one
for an error); a ```sh block with no output block after it is run for its effect (a sleep,
a call whose answer is not shown). Blocks run in order, through bash, with .venv/bin first on
PATH and `localhost:50051` pointed at the server. A document may name flags of its own for the
server in a comment, e.g. `<!-- doc-examples serve: --plans-file docs/plans.example.toml -->`.

Checking (tests/integration/test_docs.py) compares each answer with the one shown: the same
fields with the same values, but for times, which only have to be times, and ids and page
tokens, which may differ but each shown id must stand for one real id throughout (it is
replaced by that id in the commands after it). Updating writes the real answers in:

    .venv/bin/python scripts/doc_examples.py docs/api.md            # check, own server
    .venv/bin/python scripts/doc_examples.py --update docs/api.md   # rewrite the outputs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED_ADDRESS = "localhost:50051"
ID_FIELDS = frozenset({"reservation_id", "entry_id", "lot_id", "grant_entry_id", "transfer_id",
                       "next_page_token", "reservationId", "cursor", "event_id"})
_FENCE = re.compile(r"^```(\w*)\s*$")
_SUBSTITUTED_LENGTH_MIN = 12


@dataclass
class Block:
    language: str
    text: str
    start: int  # index of the first line after the opening fence
    end: int  # index of the closing fence


@dataclass
class Example:
    command: Block
    output: Block | None


def examples(markdown: str) -> list[Example]:
    """The document's ```sh blocks, each with the output block right after it, if any."""
    lines = markdown.split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        blocks.append(Block(opening.group(1), "\n".join(lines[i + 1:end]), i + 1, end))
        i = end + 1
    found = []
    for index, block in enumerate(blocks):
        if block.language != "sh" or ("grpcurl" not in block.text and "sleep" not in block.text):
            continue
        after = blocks[index + 1] if index + 1 < len(blocks) else None
        adjacent = (after is not None and after.language in ("json", "")
                    and not "\n".join(lines[block.end + 1:after.start - 1]).strip())
        found.append(Example(block, after if adjacent else None))
    return found


class Session:
    """Runs a document's examples in order against `address`, keeping the ids seen."""

    def __init__(self, address: str, lenient: bool = False) -> None:
        self.address = address
        self.ids: dict[str, str] = {}  # shown -> real
        self.lenient = lenient  # updating: learn ids from whatever fields both answers have
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        command = self._substitute(command).replace(DOCUMENTED_ADDRESS, self.address)
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                              env=self.env, timeout=60, cwd=ROOT)

    def compare(self, shown: str, real: str, where: str) -> list[str]:
        """What differs between the answer shown and the real one (ids learnt on the way)."""
        if shown.startswith("ERROR:"):
            return self._compare_error(shown, real, where)
        try:
            shown_docs, real_docs = _json_documents(shown), _json_documents(real)
        except ValueError as exc:
            return [f"{where}: not JSON ({exc}): {real[:300]}"]
        if len(shown_docs) != len(real_docs):
            return [f"{where}: {len(real_docs)} answers, {len(shown_docs)} shown"]
        problems: list[str] = []
        for a, b in zip(shown_docs, real_docs, strict=True):
            self._walk(a, b, where, problems)
        return problems

    def _compare_error(self, shown: str, real: str, where: str) -> list[str]:
        def parts(text: str) -> tuple[list[str], list[Any]]:
            heads = [line.strip() for line in text.splitlines()
                     if line.strip().startswith(("Code:", "Message:"))]
            details = [json.loads(line.split("\t", 1)[1]) for line in text.splitlines()
                       if re.match(r"^\s*\d+\)\t", line)]
            return heads, details

        shown_heads, shown_details = parts(shown)
        real_heads, real_details = parts(real)
        problems: list[str] = []
        if [self._substitute(h) for h in shown_heads] != real_heads:
            problems.append(f"{where}: shown {shown_heads}, got {real_heads}")
        if len(shown_details) != len(real_details):
            return [*problems, f"{where}: details differ: {real}"]
        for a, b in zip(shown_details, real_details, strict=True):
            self._walk(a, b, where, problems)
        return problems

    def _substitute(self, text: str) -> str:
        """`text` with each shown id replaced by the real one: only ids long enough to be
        found in text safely (reservation ids, page tokens), not entry or lot numbers."""
        for shown, real in sorted(self.ids.items(), key=lambda pair: -len(pair[0])):
            if len(shown) >= _SUBSTITUTED_LENGTH_MIN:
                text = text.replace(shown, real)
        return text

    def _walk(self, shown: Any, real: Any, path: str, problems: list[str]) -> None:
        if isinstance(shown, dict) and isinstance(real, dict):
            if set(shown) != set(real):
                problems.append(f"{path}: fields {sorted(set(shown) ^ set(real))} differ")
                if not self.lenient:
                    return
            for key in set(shown) & set(real):
                here = f"{path}.{key}"
                if key in ID_FIELDS and isinstance(shown[key], str):
                    self._same_id(shown[key], real[key], here, problems)
                elif key.endswith("_time") and isinstance(shown[key], str):
                    if not re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", str(real[key])):
                        problems.append(f"{here}: {real[key]!r} is no time")
                else:
                    self._walk(shown[key], real[key], here, problems)
        elif isinstance(shown, list) and isinstance(real, list) and (
                len(shown) == len(real) or self.lenient):
            for index, (a, b) in enumerate(zip(shown, real, strict=False)):
                self._walk(a, b, f"{path}[{index}]", problems)
        elif isinstance(shown, str) and isinstance(real, str):
            if self._substitute(shown) != real:
                problems.append(f"{path}: shown {shown!r}, got {real!r}")
        elif shown != real:
            problems.append(f"{path}: shown {shown!r}, got {real!r}")

    def _same_id(self, shown: str, real: str, path: str, problems: list[str]) -> None:
        known = self.ids.setdefault(shown, real)
        if known != real:
            problems.append(f"{path}: {shown!r} stood for {known!r}, now for {real!r}")


def _json_documents(text: str) -> list[Any]:
    decoder, found, position = json.JSONDecoder(), [], 0
    while position < len(text.rstrip()):
        while text[position].isspace():
            position += 1
        document, position = decoder.raw_decode(text, position)
        found.append(document)
    return found


def run_document(path: Path, address: str, update: bool = False) -> list[str]:
    """Run every example of `path` against `address`. Checking: returns what differs.
    Updating: writes the real answers into the document, returns what failed to run."""
    text = path.read_text()
    lines = text.split("\n")
    session = Session(address, lenient=update)
    problems: list[str] = []
    replacements: list[tuple[Block, str]] = []
    for example in examples(text):
        where = f"{path.name}:{example.command.start}"
        result = session.run(example.command.text)
        answer = (result.stdout + result.stderr).rstrip("\n")
        if example.output is None:
            if result.returncode != 0:
                problems.append(f"{where}: exit {result.returncode}: {answer[:300]}")
            continue
        compared = session.compare(example.output.text, answer, where)
        if update:  # the ids shown are learnt from the comparison; its problems are fixed
            replacements.append((example.output, answer))
            if result.returncode != 0 and not answer.startswith("ERROR:"):
                problems.append(f"{where}: exit {result.returncode}: {answer[:300]}")
        else:
            problems += compared
    if update:
        for block, answer in reversed(replacements):
            lines[block.start:block.end] = answer.split("\n")
        path.write_text(session._substitute("\n".join(lines)))
    return problems


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("documents", nargs="+", type=Path)
    parser.add_argument("--update", action="store_true", help="write the real answers in")
    args = parser.parse_args(argv)
    failed = False
    for document in args.documents:
        port = _free_port()
        with tempfile.TemporaryDirectory(prefix="credits-docs-") as data_dir:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
            server = subprocess.Popen(
                [sys.executable, "-m", "credits_service", "serve", "--data-dir", data_dir,
                 "--listen", f"127.0.0.1:{port}", "--metrics-listen", "", "--auth-disabled",
                 *serve_flags(document.read_text())],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait_serving(f"127.0.0.1:{port}")
                problems = run_document(document, f"127.0.0.1:{port}", args.update)
            finally:
                server.terminate()
                server.wait(timeout=60)
        for problem in problems:
            print(problem, file=sys.stderr)
        failed = failed or bool(problems)
    return 1 if failed else 0


def serve_flags(markdown: str) -> list[str]:
    """The server flags a document names in its `<!-- doc-examples serve: ... -->` comment."""
    found = re.search(r"<!-- doc-examples serve: (.*?) -->", markdown)
    return shlex.split(found.group(1)) if found else []


def _wait_serving(address: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "grpcurl"), "-plaintext", address,
             "grpc.health.v1.Health/Check"], capture_output=True, text=True)
        if '"SERVING"' in result.stdout:
            return
        time.sleep(0.3)
    raise TimeoutError(f"no server on {address}")


if __name__ == "__main__":
    sys.exit(main())
