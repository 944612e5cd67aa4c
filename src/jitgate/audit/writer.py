"""Writes access and auth-failure events in batches, off the request path.

Callers hand events to :meth:`AuditWriter.submit`; a thread appends them to the
chain in one transaction per batch (up to ``batch_size`` events, at least every
``flush_interval``). The queue is bounded: when it is full, ``submit`` waits
(back-pressure, never loss). When a batch cannot be written the writer keeps it,
retries with back-off and reports itself unhealthy, so the gateway fails closed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from jitgate.audit.events import NewEvent

log = logging.getLogger(__name__)

Append = Callable[[Sequence[NewEvent]], None]


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
        self._queue: queue.Queue[NewEvent] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._pending = 0
        self._healthy = True
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)

    @property
    def healthy(self) -> bool:
        return self._healthy and self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def submit(self, event: NewEvent) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(event)  # blocks while full: back-pressure

    def try_submit(self, event: NewEvent) -> bool:
        with self._idle:
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                return False
            self._pending += 1
            return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _take_batch(self) -> list[NewEvent]:
        """Wait for one event, then gather more for up to ``flush_interval``: one
        transaction per batch, not per event, even when events trickle in."""
        try:
            batch = [self._queue.get(timeout=self._interval)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self._interval
        while len(batch) < self._batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        backoff = 0.05
        batch: list[NewEvent] = []
        while not (self._stop.is_set() and not batch and self._queue.empty()):
            if not batch:
                batch = self._take_batch()
                if not batch:
                    continue
            try:
                self._append(batch)
            except Exception:
                log.exception("audit batch of %d events could not be written; retrying", len(batch))
                self._healthy = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            self._healthy = True
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()
            batch = []
