#!/usr/bin/env python3
"""Regenerate generated/ from protos/ with grpcio-tools and mypy-protobuf.

The output is committed; CI runs this script and fails on any diff, so run it after every
change to protos/ and commit the result.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "generated"


def main() -> int:
    from grpc_tools import protoc  # dev dependency, imported late so --help works without it

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    package_dirs = {Path(p).parent for p in protos}
    shutil.rmtree(OUT / "credits", ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"  # well-known types shipped with grpcio-tools
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *protos,
    ]
    # protoc finds the mypy-protobuf plugins on PATH; they sit beside this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
        return code
    for package_dir in package_dirs:
        for directory in [OUT / part for part in _prefixes(package_dir)]:
            (directory / "__init__.py").write_text("")
            (directory / "py.typed").write_text("")
    return 0


def _prefixes(path: Path) -> list[Path]:
    parts = path.parts
    return [Path(*parts[: i + 1]) for i in range(len(parts))]


if __name__ == "__main__":
    sys.exit(main())
