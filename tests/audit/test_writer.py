"""The batched audit writer: batching, back-pressure, retry, fail-closed health."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime

from jitgate.audit.events import EventType, NewEvent
from jitgate.audit.writer import AuditWriter

AT = datetime(2026, 1, 5, tzinfo=UTC)


def _event(i: int) -> NewEvent:
    return NewEvent(type=EventType.ACCESS_ALLOWED, at=AT, data={"i": i})


def test_everything_submitted_is_written_in_batches() -> None:
    batches: list[int] = []
    written: list[int] = []

    def append(events: Sequence[NewEvent]) -> None:
        batches.append(len(events))
        written.extend(int(e.data["i"]) for e in events)

    writer = AuditWriter(append, batch_size=50, flush_interval=0.01)
    writer.start()
    for i in range(500):
        writer.submit(_event(i))
    assert writer.flush(5)
    writer.close()
    assert written == list(range(500))
    assert max(batches) <= 50
    assert len(batches) < 500  # batched, not one write per event


def test_failed_batches_are_retried_not_lost_and_health_reflects_it() -> None:
    fail = threading.Event()
    fail.set()
    written: list[NewEvent] = []
    attempts = threading.Event()

    def append(events: Sequence[NewEvent]) -> None:
        if fail.is_set():
            attempts.set()
            raise RuntimeError("database down")
        written.extend(events)

    writer = AuditWriter(append, batch_size=10, flush_interval=0.01)
    writer.start()
    writer.submit(_event(1))
    assert attempts.wait(5)
    assert not writer.flush(0.2)
    assert not writer.healthy  # the gateway fails closed on this
    fail.clear()
    assert writer.flush(5)
    assert writer.healthy
    assert [e.data["i"] for e in written] == [1]
    writer.close()


def test_full_queue_blocks_the_submitter() -> None:
    release = threading.Event()

    def append(events: Sequence[NewEvent]) -> None:
        release.wait(5)

    writer = AuditWriter(append, batch_size=1, flush_interval=0.01, queue_size=2)
    writer.start()
    done = threading.Event()

    def flood() -> None:
        for i in range(10):
            writer.submit(_event(i))
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    assert not done.wait(0.3)  # back-pressure: the submitter waits
    release.set()
    assert done.wait(5)
    writer.close()


def test_try_submit_never_waits() -> None:
    release = threading.Event()
    writer = AuditWriter(lambda events: release.wait(5), batch_size=1, queue_size=1)
    writer.start()
    accepted = [writer.try_submit(_event(i)) for i in range(5)]
    assert accepted[0]
    assert not all(accepted)  # the rest found the queue full and returned at once
    release.set()
    assert writer.flush(5)
    writer.close()


def test_the_thread_wakes_for_a_full_batch_not_for_each_event() -> None:
    batches: list[int] = []
    wrote = threading.Event()

    def append(events: Sequence[NewEvent]) -> None:
        batches.append(len(events))
        wrote.set()

    writer = AuditWriter(append, batch_size=50, flush_interval=30)
    writer.start()
    for i in range(49):
        assert writer.try_submit(_event(i))
    assert not wrote.wait(0.3)  # 49 events: still gathering, nothing written
    assert writer.try_submit(_event(49))
    assert wrote.wait(5)  # the 50th fills the batch and wakes the thread
    assert batches == [50]
    writer.close()


def test_flush_writes_a_partial_batch_at_once_and_keeps_order() -> None:
    written: list[int] = []
    writer = AuditWriter(
        lambda events: written.extend(int(e.data["i"]) for e in events),
        batch_size=1000,
        flush_interval=30,
    )
    writer.start()
    for i in range(10):
        writer.submit(_event(i))
    assert writer.flush(5)
    assert written == list(range(10))
    writer.submit(_event(10))
    writer.close()
    assert written == list(range(11))
