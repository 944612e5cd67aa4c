"""The usage table that the workers of one gateway share (``--workers N``).

Real processes (spawned, as the gateway's workers are) count in one table: however their
calls race, a grant's quota admits exactly ``max_calls`` and its rate holds for the grant
as a whole. A worker killed while it holds the lock does not wedge the others; the table
is seeded once; a full table refuses grants with limits (fail closed) and reclaims the
entries of expired grants. Times are handed in (the gateway clock's POSIX timestamps),
never read.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import pickle
from collections.abc import Iterator

import pytest

from jitgate.audit.events import EventType, NewEvent
from jitgate.gateway.usage import (
    CLOCK_STEP,
    GRACE,
    TABLE_FULL,
    LocalUsageMeter,
    Seen,
    SharedUsageMeter,
    UsageMeter,
    UsageTableFull,
)
from jitgate.gateway.view import GatewayView
from jitgate.policy import parse_policy
from jitgate.tokens.grant_token import GrantClaims, verify_signature
from tests.gateway import usage_procs
from tests.gateway.conftest import Harness
from tests.gateway.test_usage_limits import POLICY
from tests.gateway.usage_procs import EXPIRES, START, claims

SPAWN = multiprocessing.get_context("spawn")
JOIN = 60.0  # seconds: a spawned interpreter starts in about one


@pytest.fixture
def meter() -> Iterator[SharedUsageMeter]:
    table = SharedUsageMeter.create()
    yield table
    table.close()


def run_racers(meter: SharedUsageMeter, grant: GrantClaims, times: list[list[float]]) -> list[int]:
    """One spawned process per list of times, all released at once; what each admitted
    (and every refusal must be for the grant's own limit)."""
    go, results = SPAWN.Event(), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=usage_procs.race, args=(meter.handle, go, results, grant, t))
        for t in times
    ]
    for proc in procs:
        proc.start()
    go.set()
    outcomes = [results.get(timeout=JOIN) for _ in procs]
    for proc in procs:
        proc.join(JOIN)
        assert proc.exitcode == 0
    reasons = set().union(*(r for _, r in outcomes))
    assert reasons <= {"quota-exhausted", "rate-limited"}, reasons
    return [admitted for admitted, _ in outcomes]


def test_processes_racing_on_one_grant_admit_exactly_max_calls(meter: SharedUsageMeter) -> None:
    grant = claims("g-quota", max_calls=30_000)
    # Three processes of 20,000 calls each (long enough to overlap): no one of them can use
    # the quota up alone.
    admitted = run_racers(meter, grant, [[START + i * 1e-5 for i in range(20_000)]] * 3)
    assert sum(admitted) == 30_000, admitted
    assert meter.admit(grant, START + 1) == (
        "quota-exhausted",
        "the grant's 30000 calls are used up",
    )


def test_processes_racing_on_one_grant_hold_its_rate_as_a_whole(meter: SharedUsageMeter) -> None:
    grant = claims("g-rate", rate=(10, 1.0))
    # Over one second, each of three processes calls every 50 us: separately counted they
    # would admit 3 x (10 + 10); together a burst of 10 and 10 more a second at most.
    times = [START + i * 5e-5 for i in range(20_000)]
    admitted = run_racers(meter, grant, [times] * 3)
    assert 10 <= sum(admitted) <= 10 + 10, admitted


def test_a_worker_killed_while_it_holds_the_lock_does_not_wedge_the_others(
    meter: SharedUsageMeter,
) -> None:
    held, never = SPAWN.Event(), SPAWN.Event()
    proc = SPAWN.Process(target=usage_procs.hold_the_lock, args=(meter.handle, held, never))
    proc.start()
    assert held.wait(JOIN)
    with pytest.raises(BlockingIOError):  # the lock excludes other processes
        fcntl.lockf(meter.handle.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    proc.kill()
    proc.join(JOIN)
    fcntl.lockf(meter.handle.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the kernel released it
    fcntl.lockf(meter.handle.fd, fcntl.LOCK_UN)
    assert meter.admit(claims("g", max_calls=1), START) is None


def test_the_table_is_seeded_once_and_outlives_its_workers(meter: SharedUsageMeter) -> None:
    assert meter.needs_seed
    go = SPAWN.Event()
    seen = {"g-seeded": Seen(2, EXPIRES)}
    seeders = [
        SPAWN.Process(target=usage_procs.seed, args=(meter.handle, go, seen)) for _ in range(2)
    ]
    for proc in seeders:
        proc.start()
    go.set()
    for proc in seeders:
        proc.join(JOIN)
        assert proc.exitcode == 0
    assert not meter.needs_seed
    meter.seed({"g-seeded": Seen(0, EXPIRES)})  # a later seed changes nothing
    grant = claims("g-seeded", max_calls=4)
    results = SPAWN.Queue()
    for _ in range(2):  # two workers in turn, the second replacing the first
        proc = SPAWN.Process(target=usage_procs.admit_once, args=(meter.handle, grant, results))
        proc.start()
        proc.join(JOIN)
        assert results.get(timeout=JOIN) == (False, None)
    assert meter.admit(grant, START) == ("quota-exhausted", "the grant's 4 calls are used up")


def test_a_full_table_refuses_grants_with_limits_and_reclaims_expired_ones() -> None:
    meter = SharedUsageMeter.create(slots=8)  # room for 6
    try:
        short = [claims(f"g{i}", max_calls=3, expires=START + 60) for i in range(5)]
        long = claims("g-long", max_calls=3, expires=START + 3600)
        for grant in [*short, long]:
            assert meter.admit(grant, START) is None
        assert meter.admit(long, START) is None
        newcomer = claims("g-new", max_calls=3, expires=START + 3600)
        assert meter.admit(newcomer, START) == TABLE_FULL
        assert meter.admit(claims("g-free"), START) is None  # no limits: never counted
        assert meter.admit(short[0], START) is None  # those counted already go on
        # Past their expiry, but not yet GRACE past it (a token's leeway): still kept.
        assert meter.admit(newcomer, START + 60 + GRACE - 1) == TABLE_FULL
        assert meter.admit(newcomer, START + 60 + GRACE + 1) is None
        # The entry that was kept kept its count.
        assert meter.admit(long, START + 70) is None
        assert meter.admit(long, START + 70) == (
            "quota-exhausted",
            "the grant's 3 calls are used up",
        )
    finally:
        meter.close()


def test_a_seed_larger_than_the_table_stops_the_start() -> None:
    meter = SharedUsageMeter.create(slots=4)  # room for 3
    try:
        with pytest.raises(UsageTableFull, match="holds 3"):
            meter.seed({f"g{i}": Seen(1, EXPIRES) for i in range(4)})
        assert meter.needs_seed
    finally:
        meter.close()


@pytest.mark.parametrize("kind", ["local", "shared"])
def test_calls_that_reach_the_lock_out_of_order_add_no_tokens(kind: str) -> None:
    meter: UsageMeter = LocalUsageMeter() if kind == "local" else SharedUsageMeter.create()
    try:
        grant = claims("g", rate=(2, 1.0))
        assert meter.admit(grant, START + 1.0) is None
        assert meter.admit(grant, START + 1.0) is None
        # A call that read the clock a little earlier reaches the lock later: no refill.
        assert meter.admit(grant, START + 0.6)[0] == "rate-limited"  # type: ignore[index]
        assert meter.admit(grant, START + 1.5) is None  # half a second: one token
        # The wall clock steps back: refilling goes on from the new time, with no bonus.
        back = START + 1.5 - CLOCK_STEP - 100
        assert meter.admit(grant, back)[0] == "rate-limited"  # type: ignore[index]
        assert meter.admit(grant, back + 0.5) is None
        # And forward: at most a full burst.
        assert meter.admit(grant, back + 3600) is None
        assert meter.admit(grant, back + 3600) is None
        assert meter.admit(grant, back + 3600)[0] == "rate-limited"  # type: ignore[index]
    finally:
        meter.close()


def test_the_local_meter_keeps_an_entry_for_the_leeway_past_expiry() -> None:
    meter = LocalUsageMeter()
    grant = claims("g", max_calls=1, expires=START + 60)
    assert meter.admit(grant, START) is None
    meter.prune(START + 60 + GRACE - 1)  # a token is still accepted within its leeway
    assert meter.admit(grant, START + 61)[0] == "quota-exhausted"  # type: ignore[index]


def test_a_handle_crosses_only_a_spawn(meter: SharedUsageMeter) -> None:
    with pytest.raises(TypeError, match="spawn"):
        pickle.dumps(meter.handle)


@pytest.mark.anyio
async def test_views_sharing_a_table_seed_it_once_from_the_audit_log(
    gw: Harness, meter: SharedUsageMeter
) -> None:
    gw.ctx.replace_policy(parse_policy(POLICY, "limits.yaml"))  # GET /v1/**: 3 calls
    issued = gw.issue(["GET /v1/**"])
    allowed = NewEvent(
        type=EventType.ACCESS_ALLOWED,
        at=gw.clock.now(),
        principal="alice",
        api="demo",
        grant=issued.grant.id,
        data={"status": 200},
    )
    with gw.store.transaction() as tx:
        tx.audit.append([allowed, allowed])  # two calls admitted before a restart
    workers = [
        GatewayView(gw.store, gw.box, gw.clock, max_staleness=2.0, usage=meter) for _ in range(2)
    ]
    for view in workers:  # both start: the second finds the table seeded
        view.resync()
    verified = verify_signature(issued.token, gw.view.public_keys, gw.enforcer.issuer)
    assert isinstance(verified, GrantClaims)
    now = gw.clock.timestamp()
    assert workers[1].usage.admit(verified, now) is None  # the third call
    assert workers[0].usage.admit(verified, now) == (
        "quota-exhausted",
        "the grant's 3 calls are used up",
    )
