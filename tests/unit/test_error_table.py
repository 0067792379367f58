"""The one error table: every error a caller can get has its status code there."""

from __future__ import annotations

import inspect

import grpc

from credits_service.domain import errors
from credits_service.transport.grpc.errors import status_code_of

# Meant to answer INTERNAL: a bug, never a caller's mistake.
INTERNAL_BY_DESIGN = {errors.CreditsError, errors.LotsOutOfStep, errors.Declined}


def _error_classes() -> list[type[errors.CreditsError]]:
    return [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, errors.CreditsError) and not cls.__name__.startswith("_")]


def test_every_error_has_a_status_code_other_than_internal():
    unmapped = [cls.__name__ for cls in _error_classes() if cls not in INTERNAL_BY_DESIGN
                and status_code_of(cls.__new__(cls)) is grpc.StatusCode.INTERNAL]
    assert unmapped == []

