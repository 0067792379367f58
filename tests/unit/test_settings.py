"""Settings: flags beat environment beats defaults, and every bound is enforced at start."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from credits_service.settings import Settings, SettingsError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    return parser.parse_args(argv)


def test_a_flag_beats_the_environment_which_beats_the_default():
    environ = {"CREDITS_POOL_SIZE": "7", "CREDITS_PAGE_SIZE_MAX": "300"}
    settings = Settings.load(_args("--pool-size", "9"), environ)
    assert (settings.database.pool_size, settings.ledger.page_size_max,
            settings.workers.sweep_interval_s) == (9, 300, 1.0)


def test_an_empty_metrics_listen_turns_metrics_off_while_other_empty_values_mean_unset():
    assert Settings.load(_args("--metrics-listen", ""), {}).telemetry.metrics_listen == ""
    assert Settings.load(None, {"CREDITS_METRICS_LISTEN": ""}).telemetry.metrics_listen == ""
    assert Settings.load(None, {"CREDITS_LISTEN": ""}).server.listen == "127.0.0.1:50051"
    assert Settings.load(None, {}).telemetry.metrics_listen == "127.0.0.1:9464"


def test_booleans_parse_from_the_environment():
    assert Settings.load(None, {"CREDITS_REFLECTION": "off"}).server.reflection is False
    with pytest.raises(ValueError, match="reflection"):
        Settings.load(None, {"CREDITS_REFLECTION": "maybe"})


@pytest.mark.parametrize("changes,field", [
    ({"pool_size": 0}, "pool_size"),
    ({"reservation_ttl_default_s": 600.0, "reservation_ttl_max_s": 300.0},
     "reservation_ttl_default_s"),
    ({"page_size_default": 501}, "page_size_default"),
    ({"statement_timeout_ms": 5000, "command_timeout_s": 5.0}, "command_timeout_s"),
    ({"lock_timeout_ms": 6000}, "lock_timeout_ms"),
    ({"idempotency_retention_s": 60.0}, "idempotency_retention_s"),
    ({"shutdown_grace_s": -1.0}, "shutdown_grace_s"),
    ({"reservation_lifetime_max_s": 3600.0}, "reservation_lifetime_max_s"),
    ({"event_loop": "trio"}, "event_loop"),
])
def test_out_of_range_settings_are_refused_by_name(changes, field):
    with pytest.raises(ValueError, match=field):
        Settings.build(**changes)


@pytest.mark.parametrize("changes,message", [
    ({"pool_size": 0}, "setting pool_size=0 (--pool-size, CREDITS_POOL_SIZE) is out of "
                       "range: must be at least 1 and at most 200"),
    ({"lock_timeout_ms": 6000}, "setting lock_timeout_ms=6000 (--lock-timeout-ms, "
                                "CREDITS_LOCK_TIMEOUT_MS) must be at most statement_timeout_ms "
                                "(5000)"),
    ({"event_loop": "trio"}, "setting event_loop='trio' (--event-loop, CREDITS_EVENT_LOOP) "
                             "must be one of uvloop, asyncio"),
    ({"auth_open_services": "health,admin"}, "may name only health, reflection"),
])
def test_an_invalid_setting_names_itself_its_value_and_its_rule(changes, message):
    with pytest.raises(SettingsError) as raised:
        Settings.build(**changes)
    assert message in str(raised.value)


def test_every_invalid_setting_is_named_at_once():
    with pytest.raises(SettingsError) as raised:
        Settings.load(None, {"CREDITS_POOL_SIZE": "lots", "CREDITS_SWEEP_INTERVAL_S": "0",
                             "CREDITS_EVENT_LOOP": "trio"})
    assert "setting pool_size='lots' (--pool-size, CREDITS_POOL_SIZE) cannot be read as an " \
           "integer" in str(raised.value)
    with pytest.raises(SettingsError) as raised:
        Settings.build(sweep_interval_s=0, event_loop="trio")
    assert "sweep_interval_s=0" in str(raised.value) and "event_loop='trio'" in str(
        raised.value)


def test_the_former_hold_names_of_the_reservation_settings_are_still_read():
    args = _args("--hold-ttl-default-s", "60")
    settings = Settings.load(args, {"CREDITS_HOLD_TTL_MAX_S": "600"})
    assert (settings.ledger.reservation_ttl_default_s,
            settings.ledger.reservation_ttl_max_s) == (60.0, 600.0)


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
