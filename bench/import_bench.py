#!/usr/bin/env python3
"""Time `credits-service import` of a generated balances file into a fresh embedded
PostgreSQL: N rows, one account each (the worst case: every row creates its account), half
with an expiry, every row with an external id. Prints rows/s and the seconds taken; then
imports the file again (every row already imported), runs `verify`, and exports the N GRANT
entries the import wrote with `credits-service export history` (seconds, and the export
process's peak RSS: it streams, so the RSS does not grow with N).

    .venv/bin/python bench/import_bench.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_file(path: Path, rows: int) -> None:
    with path.open("w") as file:
        file.write("account_id,amount,plan,expire_time,external_id\n")
        for n in range(rows):
            expiry = "2031-01-01T00:00:00Z" if n % 2 else ""
            file.write(f"user-{n},{1 + n % 1000},,{expiry},legacy-{n}\n")


def run(*args: str) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "credits_service", *args], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    took_s = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{args[0]} failed: {result.stdout}{result.stderr}")
    lines = result.stdout.strip().splitlines()
    return took_s, lines[-1] if lines else ""


def run_measured(*args: str) -> tuple[float, int, str]:
    """run(), also returning the process's peak RSS in KiB (from wait4)."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "credits_service", *args], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    errors = process.stderr.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    took_s = time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"{args[0]} failed: {errors}")
    return took_s, usage.ru_maxrss, errors.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="credits-import-") as directory:
        data_dir = Path(directory) / "data"
        csv_path = Path(directory) / "balances.csv"
        write_file(csv_path, args.rows)
        run("migrate", "--data-dir", str(data_dir))
        took_s, summary = run("import", str(csv_path), "--data-dir", str(data_dir),
                              "--batch-rows", str(args.batch_rows))
        print(f"import of {args.rows:,} rows: {took_s:.1f} s, {args.rows / took_s:,.0f} rows/s "
              f"(process start, embedded PostgreSQL start and stop included)\n  {summary}")
        again_s, summary = run("import", str(csv_path), "--data-dir", str(data_dir))
        print(f"the same file again: {again_s:.1f} s\n  {summary}")
        verify_s, summary = run("verify", "--data-dir", str(data_dir))
        print(f"verify: {verify_s:.1f} s\n  {summary}")
        out = Path(directory) / "history.csv"
        export_s, rss_kb, summary = run_measured(
            "export", "history", "--from", "2000-01-01T00:00:00Z", "--to",
            "2100-01-01T00:00:00Z", "--out", str(out), "--data-dir", str(data_dir))
        print(f"export of the history: {export_s:.1f} s, peak RSS {rss_kb / 1024:.0f} MB, "
              f"{out.stat().st_size / 1e6:.0f} MB of CSV\n  {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
