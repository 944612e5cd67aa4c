"""What the spawned processes of ``test_shared_usage.py`` run: each stands for a gateway
worker, counting in the shared usage table through the handle it was spawned with.

Kept apart from the tests so that a spawned child imports only the meter, not pytest or
the gateway harness.
"""

from __future__ import annotations

import fcntl
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

from jitgate.gateway.usage import Seen, SharedUsageMeter, UsageHandle
from jitgate.tokens.grant_token import GrantClaims

START = 1_800_000_000.0  # a POSIX time: the clock every process is handed
EXPIRES = START + 3600


def claims(
    grant_id: str,
    *,
    max_calls: int | None = None,
    rate: tuple[int, float] | None = None,
    expires: float = EXPIRES,
) -> GrantClaims:
    return GrantClaims(
        principal="alice",
        api="demo",
        grant_id=grant_id,
        jti="j",
        scopes=("GET /**",),
        not_before=START,
        expires=expires,
        max_calls=max_calls,
        rate=rate,
    )


def race(
    handle: UsageHandle,
    go: Event,
    results: Queue[tuple[int, set[str]]],
    grant: GrantClaims,
    times: list[float],
) -> None:
    """Once ``go`` is set, one call of ``grant`` at each of ``times``; reports how many
    were admitted, and the reasons of the others."""
    meter = SharedUsageMeter.attach(handle)
    go.wait()
    admitted, reasons = 0, set()
    for now in times:
        refused = meter.admit(grant, now)
        if refused is None:
            admitted += 1
        else:
            reasons.add(refused[0])
    meter.close()
    results.put((admitted, reasons))


def seed(handle: UsageHandle, go: Event, seen: dict[str, Seen]) -> None:
    """Seed the table as a starting worker does, once ``go`` is set."""
    meter = SharedUsageMeter.attach(handle)
    go.wait()
    meter.seed(seen)
    meter.close()


def admit_once(handle: UsageHandle, grant: GrantClaims, results: Queue[object]) -> None:
    """A worker that starts (seeding if the table asks for it: it does not), counts one
    call, and ends."""
    meter = SharedUsageMeter.attach(handle)
    needed = meter.needs_seed
    results.put((needed, meter.admit(grant, START)))
    meter.close()


def hold_the_lock(handle: UsageHandle, held: Event, never: Event) -> None:
    """Take the table's lock and keep it until killed."""
    fcntl.lockf(handle.fd, fcntl.LOCK_EX)
    held.set()
    never.wait()
