"""The serve command's process set-up."""

from __future__ import annotations

import gc
import weakref

from credits_service.cli import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.self = self  # a reference cycle: only the collector frees it


def test_the_startup_heap_is_collected_then_frozen() -> None:
    garbage = _Node()
    alive = weakref.ref(garbage)
    del garbage
    survivor = _Node()
    frozen_before = gc.get_freeze_count()
    try:
        freeze_startup_heap()
        assert alive() is None  # collected first: frozen garbage would never be freed
        assert gc.get_freeze_count() > frozen_before
        assert gc.is_tracked(survivor)
        assert not any(obj is survivor for obj in gc.get_objects())  # in no generation now
    finally:
        gc.unfreeze()
