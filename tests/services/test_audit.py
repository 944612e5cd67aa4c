"""The audit trail of a real flow, and tampering with it behind the services' back.

Invariant 7: the log is append-only and tamper-evident; verification detects any
edited, deleted, reordered or inserted event and names the first bad ``seq``. What the
chain alone cannot show (a cut or consistently rewritten tail) the recorded head and
the signed checkpoints do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, insert, text, update

from jitgate.audit.chain import link
from jitgate.audit.events import ChainedEvent, EventType, NewEvent
from jitgate.clock import FrozenClock
from jitgate.errors import Forbidden
from jitgate.policy import DEMO_POLICY_PATH, load_policy
from jitgate.services import access, grants
from jitgate.services import audit as audit_service
from jitgate.services.audit import Verification, verify_store
from jitgate.services.bootstrap import ensure_keyring
from jitgate.services.context import Context
from jitgate.storage.audit_repo import AuditFilter, AuditRepo, event_row
from jitgate.storage.store import Store
from jitgate.storage.tables import audit_events, audit_head
from jitgate.tokens.keys import new_key

from .conftest import Demo, add_principal, event_types

DEMO_SETUP = [
    "signing_key.created",
    "principal.created",  # alice, bob, carol, admin
    "principal.created",
    "principal.created",
    "principal.created",
    "api.created",
    "principal.token_created",  # the four demo tokens
    "principal.token_created",
    "principal.token_created",
    "principal.token_created",
]


def _flow(ctx: Context, demo: Demo, clock: FrozenClock) -> dict[str, str]:
    """A write request approved by bob, a token, a release; a read, a deny, a cancel."""
    pending = access.create_request(
        ctx, demo.alice, api="demo", scopes=["POST /items"], duration="30m", reason="fix"
    ).request.id
    clock.advance(60)
    grant = access.approve(ctx, demo.bob, pending, comment="go").grant
    assert grant is not None
    grants.issue_token(ctx, demo.alice, grant.id)
    clock.advance(60)
    grants.revoke(ctx, demo.alice, grant.id, "")
    read = access.create_request(
        ctx, demo.alice, api="demo", scopes=["GET /items"], duration="5m", reason="look"
    ).grant
    assert read is not None
    denied = access.create_request(
        ctx, demo.alice, api="demo", scopes=["PUT /x"], duration="5m", reason="w"
    ).request.id
    access.deny(ctx, demo.carol, denied, comment="no")
    cancelled = access.create_request(
        ctx, demo.alice, api="demo", scopes=["PUT /x"], duration="5m", reason="w"
    ).request.id
    access.cancel(ctx, demo.alice, cancelled)
    grants.revoke(ctx, demo.bob, read.id, "enough")
    return {"pending": pending, "grant": grant.id, "read": read.id}


FLOW_EVENTS = [
    "request.created",
    "request.decided",
    "request.approved",
    "grant.issued",
    "grant.token_issued",
    "grant.released",
    "request.created",  # the read: granted by policy
    "request.decided",
    "grant.issued",
    "request.created",  # denied by carol
    "request.decided",
    "request.denied",
    "request.created",  # cancelled by alice
    "request.decided",
    "request.cancelled",
    "grant.revoked",
]


def _verify(ctx: Context) -> Verification:
    return verify_store(ctx.store, dict(ctx.keyring.public_keys))


def _events(store: Store) -> list[ChainedEvent]:
    with store.transaction() as tx:
        return list(tx.audit.stream())


def test_a_full_flow_is_recorded_in_order_and_verifies(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    ids = _flow(ctx, demo, clock)

    assert event_types(ctx.store) == DEMO_SETUP + FLOW_EVENTS
    result = _verify(ctx)
    assert result.ok, result.as_dict()
    assert result.chain.checked == len(DEMO_SETUP) + len(FLOW_EVENTS)
    shown = result.as_dict()
    assert (shown["ok"], shown["problem"], shown["head_problem"]) == (True, None, None)
    events = _events(ctx.store)
    with ctx.store.transaction() as tx:
        assert tx.audit.head() == (events[-1].seq, events[-1].hash)

    # Who did what is on the events.
    grant_events = [e for e in events if e.grant == ids["grant"]]
    assert [(e.type, e.actor) for e in grant_events] == [
        ("grant.issued", "bob"),
        ("grant.token_issued", "alice"),
        ("grant.released", "alice"),
    ]
    assert all(e.principal == "alice" and e.api == "demo" for e in grant_events)
    approved = next(e for e in events if e.type == "request.approved")
    assert approved.data == {
        "comment": "go",
        "approvals": 1,
        "required": 1,
        "steps": [{"name": "approval", "approvals": 1, "required": 1}],
        "terms_hash": approved.data["terms_hash"],
    }
    assert len(approved.data["terms_hash"]) == 64
    assert approved.request == ids["pending"]
    auto = next(e for e in events if e.grant == ids["read"] and e.type == "grant.issued")
    assert auto.actor == "policy"
    decided = next(e for e in events if e.type == "request.decided")
    assert decided.data["outcome"] == "needs_approval"
    assert decided.data["rule"] == "demo-writes-need-approval"
    # Times come from the frozen clock, in order.
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert events[-1].at == clock.now()


def test_query_filters_and_needs_an_auditor(ctx: Context, demo: Demo, clock: FrozenClock) -> None:
    ids = _flow(ctx, demo, clock)
    auditor = add_principal(ctx, "audra", "auditors")
    for reader in (demo.admin, auditor):
        found = audit_service.query(ctx, reader, AuditFilter(grant=ids["grant"]))
        assert [e.type for e in found] == ["grant.issued", "grant.token_issued", "grant.released"]
        assert [e.type for e in audit_service.query(ctx, reader, AuditFilter(type="request.d*"))]
        page = audit_service.query(ctx, reader, AuditFilter(), after=3, limit=2)
        assert [e.seq for e in page] == [4, 5]
    for nosy in (demo.alice, demo.bob):
        with pytest.raises(Forbidden):
            audit_service.query(ctx, nosy, AuditFilter())
        with pytest.raises(Forbidden):
            audit_service.verify(ctx, nosy)
    assert audit_service.verify(ctx, auditor).ok


# -- tampering ------------------------------------------------------------------------

K = len(DEMO_SETUP) + 3  # a middle event (the flow's request.approved)


def _raw(store: Store, sql: str, **params: Any) -> None:
    with store.transaction() as tx:
        tx.connection.execute(text(sql), params)


def _move_seq(c: Connection, frm: int, to: int) -> None:
    c.execute(text("UPDATE audit_events SET seq = :to WHERE seq = :frm"), {"to": to, "frm": frm})


def _swap(store: Store, a: int, b: int) -> None:
    with store.transaction() as tx:
        _move_seq(tx.connection, a, -1)
        _move_seq(tx.connection, b, a)
        _move_seq(tx.connection, -1, b)


def _linked(prev: ChainedEvent, seq: int, **fields: Any) -> ChainedEvent:
    """A forged event that links correctly after ``prev``."""
    event = NewEvent(
        type=fields.pop("type", EventType.GRANT_ISSUED),
        at=fields.pop("at", prev.at),
        actor=fields.pop("actor", "mallory"),
        principal=fields.pop("principal", "mallory"),
        api=fields.pop("api", "demo"),
        data=fields.pop("data", {"scopes": ["* /**"]}),
    )
    return link(prev.hash, seq, event)


def _insert_in_middle(store: Store) -> None:
    events = _events(store)
    with store.transaction() as tx:
        c = tx.connection
        # Make room after K (two steps: the primary key is checked row by row).
        c.execute(text("UPDATE audit_events SET seq = -seq - 1 WHERE seq > :k"), {"k": K})
        c.execute(text("UPDATE audit_events SET seq = -seq WHERE seq < 0"))
        c.execute(insert(audit_events).values(**event_row(_linked(events[K - 1], K + 1))))


def _append_forged(store: Store, *, good_hash: bool, move_head: bool) -> None:
    events = _events(store)
    forged = _linked(events[-1], events[-1].seq + 1)
    row = event_row(forged)
    if not good_hash:
        row["hash"] = "f" * 64
    with store.transaction() as tx:
        tx.connection.execute(insert(audit_events).values(**row))
        if move_head:
            tx.connection.execute(update(audit_head).values(seq=forged.seq, hash=row["hash"]))


def _rewrite_from(store: Store, start: int, *, move_head: bool) -> None:
    """Change event ``start`` and recompute every hash after it: a consistent forgery."""
    events = _events(store)
    prev_hash = events[start - 2].hash
    with store.transaction() as tx:
        for e in events[start - 1 :]:
            data = {"comment": "rewritten"} if e.seq == start else dict(e.data)
            new = link(
                prev_hash,
                e.seq,
                NewEvent(
                    type=EventType(e.type),
                    at=e.at,
                    actor=e.actor,
                    principal=e.principal,
                    api=e.api,
                    grant=e.grant,
                    request=e.request,
                    data=data,
                ),
            )
            tx.connection.execute(
                update(audit_events)
                .where(audit_events.c.seq == e.seq)
                .values(data=event_row(new)["data"], prev_hash=new.prev_hash, hash=new.hash)
            )
            prev_hash = new.hash
        if move_head:
            tx.connection.execute(update(audit_head).values(hash=prev_hash))


def _truncate_tail(store: Store, keep: int, *, move_head: bool) -> None:
    events = _events(store)
    with store.transaction() as tx:
        tx.connection.execute(text("DELETE FROM audit_events WHERE seq > :k"), {"k": keep})
        if move_head:
            tx.connection.execute(update(audit_head).values(seq=keep, hash=events[keep - 1].hash))


def _shift_time(store: Store, seq: int) -> None:
    at = _events(store)[seq - 1].at
    with store.transaction() as tx:
        tx.connection.execute(
            update(audit_events)
            .where(audit_events.c.seq == seq)
            .values(at=at + timedelta(microseconds=1))
        )


@dataclass(frozen=True)
class Tamper:
    name: str
    act: Callable[[Store, int], None]  # (store, last seq)
    first_bad: Callable[[int], int | None]  # last seq -> expected first bad seq
    head_says: str = "truncated"  # when the chain is intact, what the head check reports


def _set(column: str, value: object, seq: int = K) -> Callable[[Store, int], None]:
    """A tamper that overwrites one column of one stored event."""
    return lambda s, n: _raw(
        s, f"UPDATE audit_events SET {column} = :v WHERE seq = :k", v=value, k=seq
    )


TAMPERS = [
    Tamper("edit data", _set("data", '{"comment":"ok"}'), lambda n: K),
    Tamper(
        "edit data by one byte",
        _set("data", '{"approvals":1,"comment":"gO","required":1}'),
        lambda n: K,
    ),
    Tamper("edit actor", _set("actor", "carol"), lambda n: K),
    Tamper("edit type", _set("type", "request.denied"), lambda n: K),
    Tamper("edit grant", _set("grant_id", "grt_other"), lambda n: K),
    Tamper("null a column", _set("principal", None), lambda n: K),
    Tamper("edit hash", _set("hash", "a" * 64), lambda n: K),
    Tamper("edit prev_hash", _set("prev_hash", "b" * 64), lambda n: K),
    Tamper("edit the first event", _set("actor", "mallory", seq=1), lambda n: 1),
    Tamper("edit the last event", lambda s, n: _set("actor", "mallory", seq=n)(s, n), lambda n: n),
    Tamper("edit time by 1us", lambda s, n: _shift_time(s, K), lambda n: K),
    Tamper(
        "delete a middle event",
        lambda s, n: _raw(s, "DELETE FROM audit_events WHERE seq = :k", k=K),
        lambda n: K,
    ),
    Tamper(
        "delete the first event",
        lambda s, n: _raw(s, "DELETE FROM audit_events WHERE seq = 1"),
        lambda n: 1,
    ),
    Tamper("swap two events' seq", lambda s, n: _swap(s, K, K + 1), lambda n: K),
    Tamper("swap first and last", lambda s, n: _swap(s, 1, n), lambda n: 1),
    Tamper(
        "insert a linked forgery in the middle", lambda s, n: _insert_in_middle(s), lambda n: K + 2
    ),
    Tamper(
        "append a badly hashed forgery",
        lambda s, n: _append_forged(s, good_hash=False, move_head=True),
        lambda n: n + 1,
    ),
    Tamper(
        "rewrite one event and rehash it alone",
        lambda s, n: _rewrite_one(s, K),
        lambda n: K + 1,
    ),
    # Cut the tail but leave the head row: the recorded head gives it away.
    Tamper(
        "delete the last event",
        lambda s, n: _truncate_tail(s, n - 1, move_head=False),
        lambda n: None,
    ),
    Tamper(
        "delete the last five events",
        lambda s, n: _truncate_tail(s, n - 5, move_head=False),
        lambda n: None,
    ),
    # Rehash every event from K on, consistently, but leave the head row alone.
    Tamper(
        "rewrite the tail consistently",
        lambda s, n: _rewrite_from(s, K, move_head=False),
        lambda n: None,
        head_says="rewritten",
    ),
    # Append a well-linked forgery: the chain cannot tell; the head row can.
    Tamper(
        "append a well-linked forgery",
        lambda s, n: _append_forged(s, good_hash=True, move_head=False),
        lambda n: None,
        head_says="added outside jitgate",
    ),
]


def _rewrite_one(store: Store, seq: int) -> None:
    events = _events(store)
    new = _linked(events[seq - 2], seq, type=EventType.REQUEST_APPROVED, data={"comment": "x"})
    with store.transaction() as tx:
        tx.connection.execute(
            update(audit_events).where(audit_events.c.seq == seq).values(**event_row(new))
        )


def _snapshot(store: Store) -> tuple[list[dict[str, Any]], list[Any]]:
    with store.engine.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(text("SELECT * FROM audit_events"))]
        head = list(c.execute(text("SELECT id, seq, hash FROM audit_head")).one())
    return rows, head


def _restore(store: Store, snap: tuple[list[dict[str, Any]], list[Any]]) -> None:
    rows, (hid, hseq, hhash) = snap
    columns = list(rows[0])
    with store.transaction() as tx:
        tx.connection.execute(text("DELETE FROM audit_events"))
        tx.connection.execute(
            text(
                f"INSERT INTO audit_events ({', '.join(columns)}) "
                f"VALUES ({', '.join(':' + c for c in columns)})"
            ),
            rows,
        )
        tx.connection.execute(
            text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = :i"),
            {"s": hseq, "h": hhash, "i": hid},
        )


def test_every_tampering_is_detected_at_the_right_seq(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    _flow(ctx, demo, clock)
    assert _events(ctx.store)[K - 1].type == "request.approved"
    n = len(_events(ctx.store))
    snap = _snapshot(ctx.store)
    assert _verify(ctx).ok

    for tamper in TAMPERS:
        tamper.act(ctx.store, n)
        result = _verify(ctx)
        assert not result.ok, tamper.name
        expected = tamper.first_bad(n)
        if expected is None:  # the chain itself is intact: the head shows the cut
            assert result.chain.ok, tamper.name
            assert result.head_problem is not None, tamper.name
            assert tamper.head_says in result.head_problem, tamper.name
        else:
            assert result.chain.first_bad_seq == expected, (tamper.name, result.as_dict())
            assert result.chain.problem, tamper.name
            assert result.chain.checked == expected - 1, tamper.name
        # What the API and the CLI show says so too, with the reason.
        shown = result.as_dict()
        assert shown["ok"] is False, tamper.name
        assert shown["problem"], tamper.name
        assert shown["problem"] == (result.chain.problem or result.head_problem), tamper.name
        _restore(ctx.store, snap)
        assert _verify(ctx).ok, f"restore after {tamper.name!r}"


def test_a_careful_forger_is_only_caught_by_a_checkpoint(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    """Cutting or rewriting the tail *and* the head row passes the chain check; the signed
    checkpoint does not."""
    _flow(ctx, demo, clock)
    snap = _snapshot(ctx.store)
    n = len(_events(ctx.store))

    # Without a checkpoint these go unnoticed: that is what checkpoints are for.
    for forge in (
        lambda: _truncate_tail(ctx.store, n - 3, move_head=True),
        lambda: _rewrite_from(ctx.store, K, move_head=True),
    ):
        forge()
        assert _verify(ctx).ok
        _restore(ctx.store, snap)

    cp = audit_service.checkpoint(ctx)
    assert cp is not None
    assert cp.seq == n
    assert event_types(ctx.store)[-1] == "audit.checkpoint"
    # Two more events after the checkpoint (and its own event): the unprotected tail.
    access.create_request(ctx, demo.alice, api="demo", scopes=["GET /x"], duration=60, reason="r")
    snap = _snapshot(ctx.store)
    last = len(_events(ctx.store))
    assert last == n + 1 + 3
    good = _verify(ctx)
    assert good.ok
    assert good.checkpoint == cp

    forgeries: dict[str, Callable[[], None]] = {
        "cut back to before the checkpoint": lambda: _truncate_tail(
            ctx.store, n - 1, move_head=True
        ),
        "cut far back": lambda: _truncate_tail(ctx.store, 3, move_head=True),
        "rewrite history consistently": lambda: _rewrite_from(ctx.store, K, move_head=True),
        "rewrite from the checkpointed event": lambda: _rewrite_from(ctx.store, n, move_head=True),
    }
    for name, forge in forgeries.items():
        forge()
        result = _verify(ctx)
        assert result.chain.ok, name  # every hash is consistent...
        assert not result.ok, name  # ...but the signed head disagrees
        assert result.checkpoint_problem is not None, name
        shown = result.as_dict()
        assert shown["ok"] is False, name  # not the chain's own "ok"
        assert shown["chain_ok"] is True, name
        assert shown["problem"] == result.checkpoint_problem, name
        _restore(ctx.store, snap)
        assert _verify(ctx).ok, f"restore after {name!r}"


def test_checkpoint_tampering_is_detected(ctx: Context, demo: Demo) -> None:
    cp = audit_service.checkpoint(ctx)
    assert cp is not None
    assert _verify(ctx).ok
    flipped = cp.signature[:5] + ("B" if cp.signature[5] == "A" else "A") + cp.signature[6:]
    assert flipped != cp.signature
    for column, value in [
        ("signature", flipped),  # one character of the signature
        ("signature", ""),
        ("hash", "c" * 64),  # claim another head
        ("seq", 3),  # claim an earlier seq
        ("kid", "k-unknown"),  # a key we do not have
        ("at", "2026-01-05 10:00:01"),  # re-dated
    ]:
        with ctx.store.engine.connect() as c:
            original = c.execute(text(f"SELECT {column} FROM audit_checkpoints")).scalar_one()
        _raw(ctx.store, f"UPDATE audit_checkpoints SET {column} = :v", v=value)

        result = _verify(ctx)

        assert result.chain.ok, column
        assert not result.ok, column
        assert result.checkpoint_problem is not None, column
        assert "signature does not verify" in result.checkpoint_problem, column
        assert result.as_dict()["ok"] is False, column
        _raw(ctx.store, f"UPDATE audit_checkpoints SET {column} = :v", v=original)
        assert _verify(ctx).ok, f"restore {column}"

    # Checked against someone else's key under our key id: refused.
    _, other = new_key(ctx.box, ctx.now())
    result = verify_store(ctx.store, {ctx.keyring.signing_kid: other.public_key()})
    assert not result.ok
    assert result.checkpoint_problem is not None


def test_checkpoint_only_when_the_head_moved(ctx: Context, demo: Demo) -> None:
    first = audit_service.checkpoint(ctx)
    assert first is not None
    seq = len(_events(ctx.store))
    assert first.seq == seq - 1  # its own event follows it
    # Nothing happened since but the checkpoint itself: an idle log stays idle.
    assert audit_service.checkpoint(ctx) is None
    assert audit_service.checkpoint(ctx) is None
    assert len(_events(ctx.store)) == seq
    access.create_request(ctx, demo.alice, api="demo", scopes=["GET /x"], duration=60, reason="r")
    second = audit_service.checkpoint(ctx)
    assert second is not None
    assert second.seq == seq + 3
    with ctx.store.transaction() as tx:
        assert tx.audit.latest_checkpoint() == second
    assert _verify(ctx).checkpoint == second


def test_empty_log_gets_no_checkpoint(store: Store, clock: FrozenClock, box: Any) -> None:
    ring = ensure_keyring(store, box, clock)  # writes signing_key.created ...
    with store.transaction() as tx:  # ... which we take back to get an empty log
        tx.connection.execute(text("DELETE FROM audit_events"))
        tx.connection.execute(update(audit_head).values(seq=0, hash="0" * 64))
    bare = Context(
        store=store,
        clock=clock,
        box=box,
        issuer="i",
        gateway_url="g",
        policy=load_policy(DEMO_POLICY_PATH),
        keyring=ring,
        audit=None,  # type: ignore[arg-type]
    )
    assert audit_service.checkpoint(bare) is None
    result = verify_store(store, dict(ring.public_keys))
    assert result.ok
    assert result.chain.checked == 0


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_appends_racing_a_verification_raise_no_false_alarm(
    ctx: Context, demo: Demo, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New events and a new checkpoint committed while the verifier walks the chain are
    beyond what it read first; they must not read as a truncation."""
    # PostgreSQL only: a SQLite reader sees one snapshot, so there is no race to lose.
    assert ctx.store.engine.dialect.name == "postgresql"
    original = AuditRepo.stream
    fired = threading.Event()

    def stream_then_race(self: AuditRepo, **kw: Any) -> Any:
        yield from original(self, **kw)
        if not fired.is_set():
            fired.set()
            worker = threading.Thread(
                target=lambda: (
                    access.create_request(
                        ctx, demo.alice, api="demo", scopes=["GET /x"], duration=60, reason="r"
                    ),
                    audit_service.checkpoint(ctx),
                )
            )
            worker.start()
            worker.join(timeout=30)

    monkeypatch.setattr(AuditRepo, "stream", stream_then_race)
    result = _verify(ctx)
    assert fired.is_set()
    assert result.ok, result.as_dict()
    monkeypatch.undo()
    assert _verify(ctx).ok
