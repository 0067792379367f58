"""The client library keeps up with the server: every RPC the service has is called by a
typed method of CreditsClient, and every ErrorInfo reason the server can answer has its own
exception class (a new RPC or reason without them fails here)."""

from __future__ import annotations

import inspect
from pathlib import Path

import grpc

import credits_client
from credits.v1 import credits_pb2
from credits_client.errors import CreditsError, typed
from credits_service.domain import errors

CLIENT = Path(credits_client.__file__).parent
# Reasons only ever answered as INTERNAL (a bug) or only inside the server
SERVER_ONLY = {"INTERNAL", "DECLINED", "LOTS_OUT_OF_STEP"}


def _server_reasons() -> set[str]:
    reasons = set()
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.CreditsError) and isinstance(getattr(cls, "reason", None),
                                                               str):
            reasons.add(cls.reason)
    return reasons - SERVER_ONLY


def test_every_rpc_has_a_typed_method():
    source = "".join(path.read_text() for path in CLIENT.glob("*.py"))
    service = credits_pb2.DESCRIPTOR.services_by_name["CreditsService"]
    missing = [m.name for m in service.methods
               if f'"{m.name}"' not in source and f"_stub.{m.name}(" not in source]
    assert missing == []


def test_every_reason_the_server_answers_has_its_own_exception():
    generic = [reason for reason in sorted(_server_reasons())
               if type(typed(grpc.StatusCode.UNKNOWN, reason, "", {})) is CreditsError]
    assert generic == []
    for reason in _server_reasons():  # and every one is exported
        name = type(typed(grpc.StatusCode.UNKNOWN, reason, "", {})).__name__
        assert name in credits_client.__all__, name


def test_an_unknown_reason_is_still_a_credits_error_with_its_code():
    error = typed(grpc.StatusCode.NOT_FOUND, "SOMETHING_NEW", "news", {"a": "b"})
    assert type(error) is CreditsError and error.reason == "SOMETHING_NEW"
    assert error.code is grpc.StatusCode.NOT_FOUND and error.metadata == {"a": "b"}
