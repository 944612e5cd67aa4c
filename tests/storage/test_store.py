"""The store itself, on SQLite and PostgreSQL: migrations, time, atomicity, locking."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from jitgate.audit.chain import GENESIS_HASH, verify_events
from jitgate.audit.events import EventType, NewEvent
from jitgate.domain.models import (
    AccessRequest,
    Api,
    Decision,
    Grant,
    GrantStatus,
    Injection,
    InjectionKind,
    Outcome,
    Principal,
    PrincipalKind,
    RequestStatus,
    Risk,
)
from jitgate.storage.access_repo import Approval
from jitgate.storage.database import migrate
from jitgate.storage.store import Store
from jitgate.storage.tables import audit_events, metadata, principals

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)

# Instants that tend to break a naive/aware or float/second round trip.
INSTANTS = [
    T0,
    T0.replace(microsecond=1),
    T0.replace(microsecond=999_999),
    datetime(2026, 3, 29, 1, 59, 59, 999_999, tzinfo=UTC),  # a European DST switch
    datetime(2026, 1, 5, 15, 30, 0, 123_456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 1, 4, 23, 59, 59, 500_000, tzinfo=timezone(timedelta(hours=-8))),
    datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2100, 2, 28, 0, 0, 0, 1, tzinfo=UTC),
]


def _seed(store: Store) -> None:
    """A principal, an API and a pending request for the repository tests."""
    with store.transaction() as tx:
        tx.directory.insert_principal(Principal("alice", PrincipalKind.USER, "Alice"), T0)
        tx.directory.insert_principal(Principal("bob", PrincipalKind.USER, "Bob"), T0)
        tx.directory.insert_api(
            Api("demo", "http://u", Injection(InjectionKind.HEADER), "dev"), b"v1cipher", T0
        )
        tx.access.insert_request(_request("req_1"))


def _request(rid: str, *, created_at: datetime = T0) -> AccessRequest:
    return AccessRequest(
        id=rid,
        requester="alice",
        api="demo",
        scopes=("GET /x",),
        duration=timedelta(minutes=5),
        reason="r",
        status=RequestStatus.PENDING,
        created_at=created_at,
        decision=Decision(Outcome.NEEDS_APPROVAL, "rule", ("why",), Risk(3, (("writes", 3),))),
    )


def _events(store: Store) -> list[object]:
    with store.transaction() as tx:
        return list(tx.audit.stream())


# -- migrations -----------------------------------------------------------------------


def test_migrations_are_idempotent_and_keep_data(store: Store) -> None:
    with store.transaction() as tx:  # a fresh database starts at the genesis
        assert tx.audit.head() == (0, GENESIS_HASH)
        assert tx.audit.last_seq() == 0
        assert tx.audit.latest_checkpoint() is None
    _seed(store)
    with store.transaction() as tx:
        tx.audit.append([NewEvent(EventType.SYSTEM_STARTED, T0, "system")])
        head = tx.audit.head()

    migrate(store.engine)
    migrate(store.engine)
    # A second process opening the same database migrates too: still a no-op.
    again = Store.open(store.engine.url.render_as_string(hide_password=False))
    again.close()

    tables = set(inspect(store.engine).get_table_names())
    assert set(metadata.tables) <= tables
    with store.engine.connect() as c:
        versions = c.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        assert len(versions) == 1
        assert c.execute(select(func.count()).select_from(principals)).scalar_one() == 2
        assert c.execute(text("SELECT count(*) FROM audit_head")).scalar_one() == 1
    with store.transaction() as tx:
        assert tx.audit.head() == head
        assert tx.access.get_request("req_1") == _request("req_1")


# -- time -------------------------------------------------------------------------------


def test_datetimes_round_trip_to_the_microsecond_as_utc(store: Store) -> None:
    _seed(store)
    with store.transaction() as tx:
        tx.audit.append(
            [
                NewEvent(EventType.SYSTEM_STARTED, at, "system", data={"i": i})
                for i, at in enumerate(INSTANTS)
            ]
        )
        for i, at in enumerate(INSTANTS):
            tx.access.insert_request(_request(f"req_t{i}", created_at=at))
            tx.access.insert_grant(
                Grant(
                    id=f"grt_t{i}",
                    request_id="req_1",
                    principal="alice",
                    api="demo",
                    scopes=("GET /x",),
                    not_before=at,
                    expires_at=at + timedelta(microseconds=1),
                    status=GrantStatus.ACTIVE,
                    created_at=at,
                )
            )

    events = _events(store)
    assert [e.at for e in events] == INSTANTS  # type: ignore[attr-defined]
    for e in events:
        assert e.at.utcoffset() == timedelta(0)  # type: ignore[attr-defined]
    assert verify_events(events).ok  # type: ignore[arg-type]  # the hashed text survived
    with store.transaction() as tx:
        for i, at in enumerate(INSTANTS):
            request = tx.access.get_request(f"req_t{i}")
            grant = tx.access.get_grant(f"grt_t{i}")
            assert request is not None
            assert grant is not None
            assert request.created_at == at
            assert request.created_at.tzinfo == UTC
            assert grant.not_before == at
            assert grant.expires_at - grant.not_before == timedelta(microseconds=1)
            assert grant.not_before.utcoffset() == timedelta(0)


def test_time_comparisons_in_sql_are_exact(store: Store) -> None:
    """Expiry queries compare at microsecond precision, whatever the offset passed in."""
    _seed(store)
    expires = T0 + timedelta(minutes=5, microseconds=7)
    with store.transaction() as tx:
        tx.access.insert_grant(
            Grant(
                "grt_e", "req_1", "alice", "demo", ("GET /x",), T0, expires, GrantStatus.ACTIVE, T0
            )
        )
    india = timezone(timedelta(hours=5, minutes=30))
    with store.transaction() as tx:
        assert tx.access.due_for_expiry(expires - timedelta(microseconds=1)) == []
        assert [g.id for g in tx.access.due_for_expiry(expires.astimezone(india))] == ["grt_e"]
        assert [g.id for g in tx.access.list_grants(status=GrantStatus.ACTIVE)] == ["grt_e"]
        after = T0 + timedelta(microseconds=1)
        assert tx.access.requests_since(after.astimezone(india), limit=10) == []
        assert [r.id for r in tx.access.requests_since(T0.astimezone(india), limit=10)] == ["req_1"]


def test_naive_datetimes_are_refused_at_the_boundary(store: Store) -> None:
    _seed(store)
    naive = datetime(2026, 1, 5, 10, 0)
    with pytest.raises(StatementError) as caught, store.transaction() as tx:
        tx.access.insert_request(_request("req_naive", created_at=naive))
    assert isinstance(caught.value.orig, ValueError)
    with store.transaction() as tx:
        assert tx.access.get_request("req_naive") is None


# -- atomicity ------------------------------------------------------------------------


class BoomError(Exception):
    pass


def test_audit_append_rolls_back_with_its_transaction(store: Store) -> None:
    _seed(store)
    with store.transaction() as tx:
        tx.audit.append([NewEvent(EventType.SYSTEM_STARTED, T0, "system")])
        head = tx.audit.head()

    def doomed() -> None:
        with store.transaction() as tx:
            chained = tx.audit.append(
                [NewEvent(EventType.POLICY_LOADED, T0, "system", data={"n": i}) for i in range(3)]
            )
            assert [e.seq for e in chained] == [2, 3, 4]
            tx.access.insert_request(_request("req_lost"))
            assert tx.audit.head()[0] == 4  # visible inside the transaction...
            raise BoomError

    with pytest.raises(BoomError):
        doomed()

    with store.transaction() as tx:  # ...and gone after it
        assert tx.audit.head() == head
        assert tx.access.get_request("req_lost") is None
    assert len(_events(store)) == 1

    # The next append continues the chain exactly where the committed one ended.
    with store.transaction() as tx:
        [next_event] = tx.audit.append([NewEvent(EventType.SYSTEM_STARTED, T0, "system")])
    assert next_event.seq == 2
    assert next_event.prev_hash == head[1]
    assert verify_events(_events(store)).ok  # type: ignore[arg-type]


def test_a_failed_statement_rolls_back_the_whole_unit(store: Store) -> None:
    _seed(store)

    def doomed() -> None:
        with store.transaction() as tx:
            tx.audit.append([NewEvent(EventType.SYSTEM_STARTED, T0, "system")])
            tx.access.insert_approval(Approval("req_1", "bob", "approve", "", T0))
            tx.access.insert_approval(Approval("req_1", "bob", "approve", "again", T0))

    with pytest.raises(IntegrityError):
        doomed()
    with store.transaction() as tx:
        assert tx.access.list_approvals("req_1") == []
        assert tx.audit.head()[0] == 0


def test_constraints_hold_in_the_database(store: Store) -> None:
    """One vote per approver, foreign keys, unique audit seq: enforced below the services."""
    with pytest.raises(IntegrityError), store.transaction() as tx:
        tx.access.insert_request(_request("req_orphan"))  # no such principal or API yet
    _seed(store)
    with store.transaction() as tx:
        tx.access.insert_approval(Approval("req_1", "bob", "approve", "", T0))
    with pytest.raises(IntegrityError), store.transaction() as tx:
        tx.access.insert_approval(Approval("req_1", "bob", "deny", "changed my mind", T0))
    with store.transaction() as tx:
        assert [(a.approver, a.verdict) for a in tx.access.list_approvals("req_1")] == [
            ("bob", "approve")
        ]

    with store.transaction() as tx:
        [event] = tx.audit.append([NewEvent(EventType.SYSTEM_STARTED, T0, "system")])
    with pytest.raises(IntegrityError), store.transaction() as tx:
        tx.connection.execute(
            audit_events.insert().values(
                seq=event.seq,
                at=T0,
                type="system.started",
                data="{}",
                prev_hash=GENESIS_HASH,
                hash=event.hash,
            )
        )


# -- locking --------------------------------------------------------------------------


def test_a_locked_request_blocks_a_second_locker_until_commit(store: Store) -> None:
    """``lock=True`` (FOR UPDATE / BEGIN IMMEDIATE) makes the second reader wait and then
    see the first one's decision, which is what stops two approvals passing together."""
    _seed(store)
    got: list[RequestStatus] = []
    holding = threading.Event()
    done = threading.Event()

    def second() -> None:
        holding.wait(10)
        with store.transaction() as tx:
            request = tx.access.get_request("req_1", lock=True)
            assert request is not None
            got.append(request.status)
        done.set()

    worker = threading.Thread(target=second)
    worker.start()
    with store.transaction() as tx:
        request = tx.access.get_request("req_1", lock=True)
        assert request is not None
        holding.set()
        assert not done.wait(0.3), "the second locker did not wait"
        tx.access.save_request_state(
            AccessRequest(**{**_fields(request), "status": RequestStatus.DENIED, "decided_at": T0})
        )
    worker.join(10)
    assert got == [RequestStatus.DENIED]


def test_reads_do_not_wait_for_writers(store: Store) -> None:
    _seed(store)
    with store.transaction() as tx:
        tx.access.insert_request(_request("req_2"))
        started = time.monotonic()
        result: list[object] = []
        reader = threading.Thread(
            target=lambda: result.append(_read_request(store, "req_1")), daemon=True
        )
        reader.start()
        reader.join(5)
        assert result, "a read-only unit of work waited for the writer"
        assert time.monotonic() - started < 5
    assert result[0] == _request("req_1")
    with store.read() as r:
        assert r.access.get_request("req_2") is not None


def _read_request(store: Store, rid: str) -> object:
    with store.read() as tx:
        return tx.access.get_request(rid)


def _fields(obj: object) -> dict[str, object]:
    return {name: getattr(obj, name) for name in obj.__slots__}  # type: ignore[attr-defined]


def test_audit_data_round_trips_byte_for_byte(store: Store) -> None:
    """What is hashed is what is read back: Unicode, integral floats, nesting, nulls."""
    data = {
        "reason": 'déploiement 🚀 — \u00e9\u0301 \u2028 "quoted" \\ back',
        "n": 1.0,
        "x": 0.1,
        "big": 2**53 + 1,
        "nested": {"list": [1, "two", None, True, {"k": []}]},
        "empty": "",
    }
    with store.transaction() as tx:
        [written] = tx.audit.append([NewEvent(EventType.SYSTEM_STARTED, T0, "ünïcode", data=data)])
    [read] = _events(store)
    assert read == written  # type: ignore[comparison-overlap]
    assert read.data["n"] == 1  # type: ignore[attr-defined]
    assert isinstance(read.data["n"], int)  # type: ignore[attr-defined]
    assert verify_events([read]).ok  # type: ignore[list-item]
