"""Settings: flags beat environment beats defaults, and every bound is enforced at start."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from credits_service.settings import Settings


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    return parser.parse_args(argv)


def test_a_flag_beats_the_environment_which_beats_the_default():
    environ = {"CREDITS_POOL_SIZE": "7", "CREDITS_PAGE_SIZE_MAX": "300"}
    settings = Settings.load(_args("--pool-size", "9"), environ)
    assert (settings.pool_size, settings.page_size_max, settings.sweep_interval_s) == (9, 300, 1.0)


def test_an_empty_metrics_listen_turns_metrics_off_while_other_empty_values_mean_unset():
    assert Settings.load(_args("--metrics-listen", ""), {}).metrics_listen == ""
    assert Settings.load(None, {"CREDITS_METRICS_LISTEN": ""}).metrics_listen == ""
    assert Settings.load(None, {"CREDITS_LISTEN": ""}).listen == "127.0.0.1:50051"
    assert Settings.load(None, {}).metrics_listen == "127.0.0.1:9464"


def test_booleans_parse_from_the_environment():
    assert Settings.load(None, {"CREDITS_REFLECTION": "off"}).reflection is False
    with pytest.raises(ValueError, match="reflection"):
        Settings.load(None, {"CREDITS_REFLECTION": "maybe"})


@pytest.mark.parametrize("changes,field", [
    ({"pool_size": 0}, "pool_size"),
    ({"hold_ttl_default_s": 600.0, "hold_ttl_max_s": 300.0}, "hold_ttl_default_s"),
    ({"page_size_default": 501}, "page_size_default"),
    ({"statement_timeout_ms": 5000, "command_timeout_s": 5.0}, "command_timeout_s"),
    ({"lock_timeout_ms": 6000}, "lock_timeout_ms"),
    ({"idempotency_retention_s": 60.0}, "idempotency_retention_s"),
    ({"shutdown_grace_s": -1.0}, "shutdown_grace_s"),
    ({"hold_lifetime_max_s": 3600.0}, "hold_lifetime_max_s"),
    ({"event_loop": "trio"}, "event_loop"),
])
def test_out_of_range_settings_are_refused_by_name(changes, field):
    with pytest.raises(ValueError, match=field):
        Settings(**changes)


def test_serve_with_a_bad_setting_exits_2_before_starting_anything():
    result = subprocess.run(
        [sys.executable, "-m", "credits_service", "serve", "--pool-size", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "pool_size" in result.stderr


def test_serve_refuses_to_start_without_principals_unless_auth_is_disabled(tmp_path):
    """Safe by default: no tokens configured and auth not disabled is a setup error, found
    before the database is started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    result = subprocess.run(
        [sys.executable, "-m", "credits_service", "serve", "--data-dir", str(tmp_path / "data"),
         "--listen", "127.0.0.1:0", "--metrics-listen", ""],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "no principal is configured" in result.stderr
    assert not (tmp_path / "data").exists()
