"""Writes access and auth-failure events in batches, off the request path.

Callers hand events to :meth:`AuditWriter.submit` (or :meth:`~AuditWriter.try_submit`);
a thread appends them to the chain in one transaction per batch: up to ``batch_size``
events, at least every ``flush_interval``. Submitting costs a deque append: the thread
is woken only when a batch is full or a flush is asked for, never once per event. The
queue is bounded: when it is full, ``submit`` waits (back-pressure, never loss). When a
batch cannot be written the writer keeps it, retries with back-off and reports itself
unhealthy, so the gateway fails closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from jitgate.audit.events import NewEvent

log = logging.getLogger(__name__)

Append = Callable[[Sequence[NewEvent]], None]


class AuditSink(Protocol):
    """Takes events that are written later, in batches (access and auth failures).

    ``healthy`` is false while events cannot be persisted; the gateway then refuses
    calls (fail closed) rather than let access go unrecorded.
    """

    @property
    def healthy(self) -> bool: ...

    def submit(self, event: NewEvent) -> None:
        """Queue ``event``, waiting while the queue is full."""

    def try_submit(self, event: NewEvent) -> bool:
        """Queue ``event`` if there is room now; never waits."""


class AuditWriter:
    def __init__(
        self,
        append: Append,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.05,
        queue_size: int = 10_000,
    ) -> None:
        self._append = append
        self._batch_size = batch_size
        self._interval = flush_interval
        self._queue_size = queue_size
        # Events in submission order, with a flush's marker after the events it waits for.
        self._items: deque[NewEvent | threading.Event] = deque()
        self._wake = threading.Event()  # a batch is full, a flush waits, or closing
        self._space = threading.Condition()  # submitters waiting for room
        self._stop = threading.Event()
        self._healthy = False  # until started; then: the last batch was written
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)

    @property
    def healthy(self) -> bool:
        """Whether events are being persisted (read on every call: a plain attribute)."""
        return self._healthy

    def start(self) -> None:
        self._healthy = True
        self._thread.start()

    def submit(self, event: NewEvent) -> None:
        """Queue ``event``, waiting while the queue is full."""
        if self.try_submit(event):
            return
        with self._space:
            while not self.try_submit(event):
                self._space.wait(0.1)

    def try_submit(self, event: NewEvent) -> bool:
        """Queue ``event`` if there is room now; never waits."""
        if len(self._items) >= self._queue_size:
            return False
        self._items.append(event)  # atomic: no lock on the request path
        if len(self._items) >= self._batch_size and not self._wake.is_set():
            self._wake.set()
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written."""
        done = threading.Event()
        self._items.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _take(self) -> tuple[list[NewEvent], threading.Event | None]:
        """The next batch, up to a flush marker (returned too) or ``batch_size`` events."""
        batch: list[NewEvent] = []
        while len(batch) < self._batch_size and self._items:
            item = self._items.popleft()
            if isinstance(item, threading.Event):
                return batch, item
            batch.append(item)
        return batch, None

    def _run(self) -> None:
        try:
            self._write_batches()
        finally:  # however the thread ends, nothing more will be written
            self._healthy = False

    def _write_batches(self) -> None:
        backoff = 0.05
        batch: list[NewEvent] = []
        marker: threading.Event | None = None
        while True:
            if not batch and marker is None:
                if not self._items:
                    if self._stop.is_set():
                        return
                    self._wake.wait(self._interval)
                self._wake.clear()  # before taking: a later set() wakes the next wait
                batch, marker = self._take()
            if batch:
                try:
                    self._append(batch)
                except Exception:
                    log.exception("audit batch of %d events not written; retrying", len(batch))
                    self._healthy = False
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
            backoff = 0.05
            self._healthy = True
            if marker is not None:
                marker.set()
            batch, marker = [], None
            with self._space:
                self._space.notify_all()
