"""Domain -> protobuf mapping details that have a reference to agree with."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from credits_service.transport.mapping import _timestamp


@pytest.mark.parametrize(
    "value",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 11, 22, 3, 4, 5, 123_456, tzinfo=timezone(timedelta(hours=5))),
        datetime(2026, 11, 22, 3, 4, 5, 7),  # naive: UTC, as FromDatetime reads it
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
    ],
)
def test_timestamps_match_protobufs_own_conversion(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    assert _timestamp(value) == expected
