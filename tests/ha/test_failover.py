"""PostgreSQL failover under load (issue 33), behind the `ha` marker, not in the default run
(`pytest -m ha`; needs root, installs Debian's postgresql-15 and pg_auto_failover when
missing, and takes a few minutes): bench/failover.py forms a monitor, a primary and a
synchronous standby on loopback, runs a reserve+commit load through the service on the
multi-host URL, and kills the primary, the whole node or its postmaster alone. Every
acknowledged hold and commit is in the ledger afterwards, the client's attempts saw only
UNAVAILABLE (retried with their keys), verify passes, and writes resume within 12 s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ha, pytest.mark.timeout(900),
              pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs via runuser")]


@pytest.mark.parametrize("kill", ["node", "postmaster"])
def test_a_killed_primary_loses_no_acknowledged_write(tmp_path, kill):
    out = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "failover.py"), "--kill", kill, "--before-s",
         "5", "--after-s", "20", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=840)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["lost"] == {"holds": 0, "commits": 0}, report
    assert report["acknowledged_commits"] > 0 and report["verify"] == "ok", report
    assert set(report["attempt_codes"]) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, report
    assert report["calls_failed_after_retries"] == [], report
    assert report["first_write_after_kill_s"] is not None, report
    assert report["first_write_after_kill_s"] < 12, report
