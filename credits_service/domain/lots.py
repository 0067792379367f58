"""Consumption order and give-back: which lots a reservation draws from and where its credits go.

Pure functions over (lot, amount) lists; the service layer reads the lots, plans here, and
writes the plan. Consumption order: lower priority number first, then the soonest expire_time
(never-expiring last), then the oldest lot (lot ids grow with creation).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from credits_service.domain.model import LotDraw


def consumption_key(priority: int, expire_time: datetime | None, lot_id: int) -> tuple:
    """Sort key of a lot in consumption order."""
    return (priority, expire_time is None, expire_time or datetime.min, lot_id)


def take(
    free: Iterable[tuple[int, int]], amount: int, partial: bool = False
) -> list[tuple[int, int]] | None:
    """Draw `amount` from `free` ((lot_id, free credits) in consumption order): the lots and
    how much from each, earliest lots emptied first; None if they cannot cover it, unless
    `partial` (an account with a credit limit): then all they offer up to `amount`."""
    taken: list[tuple[int, int]] = []
    left = amount
    for lot_id, available in free:
        if left == 0:
            break
        if available <= 0:
            continue
        part = min(available, left)
        taken.append((lot_id, part))
        left -= part
    return taken if left == 0 or partial else None


def left_after(
    free: Iterable[tuple[int, int]], taken: Iterable[tuple[int, int]]
) -> list[tuple[int, int]]:
    """What `free` still offers once `taken` is drawn from it (same order)."""
    drawn = dict(taken)
    return [(lot_id, available - drawn.get(lot_id, 0)) for lot_id, available in free
            if available > drawn.get(lot_id, 0)]


@dataclass(frozen=True, slots=True)
class CommitSplit:
    """How a Commit of `amount` settles a reservation's draws (in consumption order)."""

    consumed: tuple[tuple[int, int], ...]  # (lot_id, consumed from the reservation's draw)
    given_back: tuple[tuple[int, int], ...]  # (lot_id, returned to the lot), nonzero only
    excess: int  # what the commit needs beyond the reservation, taken from free lots


def split_commit(draws: Sequence[LotDraw], amount: int) -> CommitSplit:
    """Consume the reservation's draws in consumption order up to `amount`; what is left of
    them goes back to the lots it came from; anything above the reservation is excess."""
    consumed, given_back = [], []
    left = amount
    for draw in draws:
        part = min(draw.held, left)
        left -= part
        consumed.append((draw.lot_id, part))
        if draw.held > part:
            given_back.append((draw.lot_id, draw.held - part))
    return CommitSplit(tuple(consumed), tuple(given_back), left)


@dataclass(frozen=True, slots=True)
class LotChange:
    """A change to one lot: `held` and `remaining` move by these (usually negative) deltas."""

    lot_id: int
    held_delta: int
    remaining_delta: int


def settle(
    draws: Sequence[LotDraw],
    consumed: Iterable[tuple[int, int]],
    excess: Iterable[tuple[int, int]],
    expired_lots: set[int],
) -> tuple[list[LotChange], list[tuple[int, int]]]:
    """The lot changes that end a reservation: each draw stops being held; what was consumed leaves
    the lot; what is given back to an expired lot is written off at once. Returns the changes
    (one per lot) and the write-offs (lot_id, amount), in draw order."""
    held = {draw.lot_id: draw.held for draw in draws}
    used = dict(consumed)
    changes: dict[int, list[int]] = {}
    write_offs = []
    for draw in draws:
        back = draw.held - used.get(draw.lot_id, 0)
        gone = used.get(draw.lot_id, 0)
        if back and draw.lot_id in expired_lots:
            write_offs.append((draw.lot_id, back))
            gone += back
        changes[draw.lot_id] = [-held[draw.lot_id], -gone]
    for lot_id, part in excess:
        change = changes.setdefault(lot_id, [0, 0])
        change[1] -= part
    return [LotChange(lot_id, h, r) for lot_id, (h, r) in changes.items()], write_offs
