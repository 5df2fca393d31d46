"""The background iterator training uses to pack and copy batches ahead of the device."""

from __future__ import annotations

import threading
import time

import pytest

from tpt_jax.prefetch import prefetch


def test_items_in_order_computed_ahead() -> None:
    produced = []

    def items():
        for i in range(6):
            produced.append(i)
            yield i

    it = prefetch(items(), depth=2)
    assert next(it) == 0
    time.sleep(0.2)
    assert len(produced) >= 3  # the producer ran ahead while nobody asked
    assert list(it) == [1, 2, 3, 4, 5]


def test_an_error_in_the_producer_is_raised_at_its_item() -> None:
    def items():
        yield 1
        raise ValueError("bad row 2")

    it = prefetch(items())
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad row 2"):
        next(it)


def test_leaving_early_stops_the_producer() -> None:
    def items():
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    for i in prefetch(items(), depth=1):
        if i == 3:
            break
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
