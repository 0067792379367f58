"""The ghz configs in bench/ghz parse, name real methods, and carry data each request accepts."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from credits.v1 import credits_pb2

GHZ_DIR = Path(__file__).resolve().parents[2] / "bench" / "ghz"
CONFIGS = sorted(GHZ_DIR.glob("*.json"))
TEMPLATES = {
    r"\{\{\s*\.UUID\s*\}\}": lambda: str(uuid.uuid4()),
    r"\{\{\s*\.RequestNumber\s*\}\}": lambda: "1",
    r"\{\{\s*randomInt \d+ \d+\s*\}\}": lambda: "7",
}
SERVICES = {
    "credits.v1.CreditsService": credits_pb2.DESCRIPTOR.services_by_name["CreditsService"],
    "grpc.health.v1.Health": health_pb2.DESCRIPTOR.services_by_name["Health"],
}


def test_there_is_a_config_for_every_unary_rpc_worth_loading():
    calls = {json.loads(path.read_text())["call"] for path in CONFIGS}
    assert {"credits.v1.CreditsService.Grant", "credits.v1.CreditsService.CheckAndReserve",
            "credits.v1.CreditsService.GetBalance", "credits.v1.CreditsService.History",
            "grpc.health.v1.Health.Check"} <= calls


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_matches_the_protos(path):
    config = json.loads(path.read_text())
    assert config["host"] and config["insecure"] is True and config["concurrency"] > 0
    service_name, _, method_name = config["call"].rpartition(".")
    method = SERVICES[service_name].methods_by_name[method_name]
    if "proto" in config:
        assert (path.parent / config["proto"]).resolve().is_file()
        for import_path in config.get("import-paths", []):
            assert (path.parent / import_path).resolve().is_dir()
    text = json.dumps(config["data"])
    for pattern, value in TEMPLATES.items():
        text = re.sub(pattern, lambda _, v=value: v(), text)
    assert "{{" not in text, f"unknown template in {path.name}: {text}"
    module = health_pb2 if service_name.startswith("grpc.health") else credits_pb2
    request_class = getattr(module, method.input_type.name)
    json_format.Parse(text, request_class())  # raises on an unknown field or a bad value
    if "idempotency_key" in config["data"]:
        assert "{{.UUID}}" in config["data"]["idempotency_key"], "each call needs a fresh key"
