"""One process's notifications: the router for the store, the worker, their periodic jobs."""

from __future__ import annotations

from collections.abc import Callable

from jitgate.clock import Clock
from jitgate.config import NotificationSettings
from jitgate.notify.delivery import Deliverer
from jitgate.notify.router import NotifyRouter
from jitgate.storage.store import Store

Job = tuple[float, Callable[[], object], str]  # (period in seconds, blocking job, name)

DELIVERY_PERIOD = 1.0
EXPIRY_CHECK_PERIOD = 15.0


class Notifier:
    def __init__(
        self, settings: NotificationSettings, store: Store, clock: Clock, *, control_url: str
    ) -> None:
        self.router = NotifyRouter(settings, control_url=control_url)
        self.deliverer = Deliverer(store, settings, clock)
        self._store = store
        self._clock = clock

    def warn_expiring(self) -> int:
        return self.router.warn_expiring(self._store, self._clock)

    def jobs(self) -> list[Job]:
        """For the runner: both run in a worker thread, off the event loop."""
        return [
            (DELIVERY_PERIOD, self.deliverer.run_once, "notify-deliver"),
            (EXPIRY_CHECK_PERIOD, self.warn_expiring, "notify-expiry-warnings"),
        ]
