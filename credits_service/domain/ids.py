"""Reservation ids: UUIDs of version 7 (RFC 9562)."""

from __future__ import annotations

import os
import time


def new_reservation_ids(count: int) -> list[str]:
    """`count` UUIDs of version 7: the Unix time in milliseconds, then 74 random bits, in
    canonical form. Later reservations get larger ids, so the indexes on reservation_id grow
    at their right edge instead of touching a random page each (bench/README.md has the
    gain). The random bits come from one read of the system's random source for them all
    (uuid4 makes a system call per id), formatted as hex digits directly."""
    millis = f"{time.time_ns() // 1_000_000:012x}"[-12:]
    random = os.urandom(10 * count).hex()  # 20 hex digits an id, 19 used
    ids = []
    for start in range(0, 20 * count, 20):
        digits = random[start:start + 19]
        ids.append(f"{millis[:8]}-{millis[8:]}-7{digits[:3]}-"
                   f"{'89ab'[int(digits[3], 16) & 3]}{digits[4:7]}-{digits[7:]}")
    return ids
