"""Grants: tokens for the grantee only, release and revocation, the kill switch, expiry.

Invariant 1 (no credential outlives its grant) starts here: a token's ``exp`` is never
later than the grant's ``expires_at``, and an ended grant gets no new token.
"""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest

from jitgate.clock import FrozenClock
from jitgate.control.schemas import grant_json
from jitgate.domain.models import Grant, GrantStatus, Principal, RequestStatus
from jitgate.errors import Conflict, Forbidden, InvalidInput, NotFound
from jitgate.services import access, directory, grants
from jitgate.services.context import Context
from jitgate.tokens.grant_token import verify_signature

from .conftest import Demo, add_principal, count_rows, event_types, last_seq


def _grant(ctx: Context, who: Principal, duration: str = "10m", scope: str = "GET /v1/*") -> Grant:
    view = access.create_request(
        ctx, who, api="demo", scopes=[scope], duration=duration, reason="work"
    )
    assert view.grant is not None
    return view.grant


def _approved_write_grant(ctx: Context, demo: Demo, duration: str = "45m") -> Grant:
    view = access.create_request(
        ctx, demo.alice, api="demo", scopes=["POST /v1/x"], duration=duration, reason="w"
    )
    granted = access.approve(ctx, demo.bob, view.request.id).grant
    assert granted is not None
    return granted


# -- tokens ------------------------------------------------------------------------


def test_token_claims_match_the_grant(ctx: Context, demo: Demo, clock: FrozenClock) -> None:
    clock.advance(timedelta(microseconds=654_321))  # a grant that ends mid-second
    grant = _grant(ctx, demo.alice, "10m")
    jtis: list[str] = []
    for seconds_later in (0, 1, 598):
        clock.advance(seconds_later)
        issued = grants.issue_token(ctx, demo.alice, grant.id)

        header = jwt.get_unverified_header(issued.token)
        assert header["alg"] == "EdDSA"
        assert header["typ"] == "jit+jwt"
        assert header["kid"] == ctx.keyring.signing_kid
        key = ctx.keyring.public_keys[header["kid"]]
        claims = jwt.decode(
            issued.token,
            key,
            algorithms=["EdDSA"],
            audience="demo",
            issuer=ctx.issuer,
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
        assert claims["sub"] == "alice"
        assert claims["aud"] == "demo"
        assert claims["gid"] == grant.id
        assert claims["scope"] == ["GET /v1/*"]
        assert claims["exp"] <= grant.expires_at.timestamp()
        assert claims["exp"] > grant.expires_at.timestamp() - 1
        assert claims["nbf"] <= grant.not_before.timestamp()
        assert claims["iat"] == int(clock.now().timestamp())
        assert issued.expires_at == grant.expires_at
        assert issued.gateway_url == "http://gateway.test/demo"
        assert issued.grant == grant
        # The verifier the gateway uses agrees.
        verified = verify_signature(issued.token, ctx.keyring.public_keys, ctx.issuer)
        assert not hasattr(verified, "reason"), verified
        # Issuance is audited, by jti, never with the token.
        event = _events(ctx)[-1]
        assert (event.type, event.grant, event.actor) == ("grant.token_issued", grant.id, "alice")
        assert event.data["jti"] == claims["jti"]
        assert issued.token not in str(event.as_dict())
        jtis.append(claims["jti"])
    assert len(set(jtis)) == 3  # every token its own id


def test_token_time_bounds_follow_the_grant(ctx: Context, demo: Demo, clock: FrozenClock) -> None:
    start = clock.now() + timedelta(hours=1)
    view = access.create_request(
        ctx, demo.alice, api="demo", scopes=["GET /x"], duration="5m", reason="r", starts_at=start
    )
    assert view.grant is not None
    token = grants.issue_token(ctx, demo.alice, view.grant.id).token
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["nbf"] == int(start.timestamp())
    assert claims["exp"] == int((start + timedelta(minutes=5)).timestamp())


def test_only_the_grantee_gets_a_token(ctx: Context, demo: Demo) -> None:
    grant = _grant(ctx, demo.alice)
    seq = last_seq(ctx.store)
    for other in (demo.bob, demo.carol, demo.admin):
        with pytest.raises(Forbidden) as caught:
            grants.issue_token(ctx, other, grant.id)
        assert caught.value.code == "not-grantee"
    assert last_seq(ctx.store) == seq


def test_no_token_for_an_ended_grant(ctx: Context, demo: Demo, clock: FrozenClock) -> None:
    released, revoked, lapsed, swept = (_grant(ctx, demo.alice, "10m") for _ in range(4))
    grants.revoke(ctx, demo.alice, released.id, "")
    grants.revoke(ctx, demo.bob, revoked.id, "leak")
    clock.advance(timedelta(minutes=10))  # exactly at expires_at: already over
    assert grants.expire_grants(ctx) == 2  # swept and lapsed
    lapsed_but_active = _grant(ctx, demo.alice, "1m")
    clock.advance(timedelta(minutes=1))  # past expiry, not swept yet
    seq = last_seq(ctx.store)
    for grant in (released, revoked, lapsed, swept, lapsed_but_active):
        with pytest.raises(Conflict) as caught:
            grants.issue_token(ctx, demo.alice, grant.id)
        assert caught.value.code == "grant-ended"
    assert last_seq(ctx.store) == seq


def test_token_just_before_expiry_still_ends_at_expiry(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    grant = _grant(ctx, demo.alice, "10m")
    clock.advance(timedelta(minutes=10) - timedelta(microseconds=1))
    token = grants.issue_token(ctx, demo.alice, grant.id).token
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] <= grant.expires_at.timestamp()


# -- release and revocation ------------------------------------------------------------


def test_grantee_releases_without_a_reason(ctx: Context, demo: Demo, clock: FrozenClock) -> None:
    grant = _grant(ctx, demo.alice)
    clock.advance(30)
    ended = grants.revoke(ctx, demo.alice, grant.id, "")
    assert ended.status is GrantStatus.RELEASED
    assert ended.ended_by == "alice"
    assert ended.ended_at == clock.now()
    assert ended.end_reason == "released"
    assert grants.get_grant(ctx, grant.id) == ended
    assert ctx.feed.ended == [grant.id]  # type: ignore[attr-defined]
    event = _events(ctx)[-1]
    assert (event.type, event.actor, event.grant) == ("grant.released", "alice", grant.id)


def test_owner_or_admin_revokes(ctx: Context, demo: Demo) -> None:
    for who in ("bob", "carol", "admin"):
        grant = _grant(ctx, demo.alice)
        ctx.feed.ended.clear()  # type: ignore[attr-defined]
        ended = grants.revoke(ctx, getattr(demo, who), grant.id, "  suspicious  ")
        assert ended.status is GrantStatus.REVOKED
        assert ended.ended_by == who
        assert ended.end_reason == "suspicious"
        assert grants.get_grant(ctx, grant.id) == ended
        assert ctx.feed.ended == [grant.id]  # type: ignore[attr-defined]
        event = _events(ctx)[-1]
        assert (event.type, event.actor, event.principal) == ("grant.revoked", who, "alice")
        assert event.data == {"reason": "suspicious"}


def test_unrelated_principals_cannot_revoke(ctx: Context, demo: Demo) -> None:
    actors = [
        add_principal(ctx, "erin", "engineering"),  # a peer
        add_principal(ctx, "mallory"),  # nobody
        add_principal(ctx, "olga", "payments-owners"),  # owner of another API
    ]
    grant = _grant(ctx, demo.alice)
    before = count_rows(ctx.store)
    for actor in actors:
        with pytest.raises(Forbidden) as caught:
            grants.revoke(ctx, actor, grant.id, "because")
        assert caught.value.code == "not-allowed-to-revoke"
    assert grants.get_grant(ctx, grant.id).status is GrantStatus.ACTIVE
    assert count_rows(ctx.store) == before
    assert ctx.feed.ended == []  # type: ignore[attr-defined]


def test_revoking_someone_elses_grant_needs_a_reason(ctx: Context, demo: Demo) -> None:
    grant = _grant(ctx, demo.alice)
    for reason in ("", "   "):
        with pytest.raises(InvalidInput):
            grants.revoke(ctx, demo.bob, grant.id, reason)
    assert grants.get_grant(ctx, grant.id).status is GrantStatus.ACTIVE
    assert ctx.feed.ended == []  # type: ignore[attr-defined]


def test_revoking_twice_is_a_conflict(ctx: Context, demo: Demo) -> None:
    for first, second in (("alice", "bob"), ("bob", "alice"), ("bob", "bob"), ("alice", "alice")):
        grant = _grant(ctx, demo.alice)
        ctx.feed.ended.clear()  # type: ignore[attr-defined]
        ended = grants.revoke(ctx, getattr(demo, first), grant.id, "one")
        seq = last_seq(ctx.store)
        with pytest.raises(Conflict) as caught:
            grants.revoke(ctx, getattr(demo, second), grant.id, "two")
        assert caught.value.code == "grant-ended"
        assert grants.get_grant(ctx, grant.id) == ended
        assert last_seq(ctx.store) == seq
        assert ctx.feed.ended == [grant.id]  # type: ignore[attr-defined]


def test_revoking_after_expiry_is_a_conflict(ctx: Context, demo: Demo, clock: FrozenClock) -> None:
    lapsed, swept = _grant(ctx, demo.alice, "5m"), _grant(ctx, demo.alice, "5m")
    clock.advance(timedelta(minutes=5))
    for actor in (demo.alice, demo.bob, demo.admin):
        with pytest.raises(Conflict):
            grants.revoke(ctx, actor, lapsed.id, "late")
    assert grants.get_grant(ctx, lapsed.id).status is GrantStatus.ACTIVE  # left for the sweeper
    assert grants.expire_grants(ctx) == 2
    for actor in (demo.alice, demo.bob, demo.admin):
        with pytest.raises(Conflict):
            grants.revoke(ctx, actor, swept.id, "late")
    assert grants.get_grant(ctx, swept.id).status is GrantStatus.EXPIRED
    assert ctx.feed.ended == []  # type: ignore[attr-defined]


def test_unknown_grant_is_not_found(ctx: Context, demo: Demo) -> None:
    for call in (
        lambda: grants.revoke(ctx, demo.admin, "grt_nope", "x"),
        lambda: grants.issue_token(ctx, demo.alice, "grt_nope"),
        lambda: grants.get_grant(ctx, "grt_nope"),
    ):
        with pytest.raises(NotFound) as caught:
            call()
        assert caught.value.code == "grant-not-found"


# -- kill switch --------------------------------------------------------------------


def _mixed_grants(ctx: Context, demo: Demo) -> dict[str, Grant]:
    """alice: two reads, one write; erin: one read; alice: one already released."""
    erin = directory.get_principal(ctx, "erin")
    made = {
        "a1": _grant(ctx, demo.alice),
        "a2": _grant(ctx, demo.alice, scope="GET /v2/*"),
        "aw": _approved_write_grant(ctx, demo),
        "e1": _grant(ctx, erin),
        "gone": _grant(ctx, demo.alice),
    }
    grants.revoke(ctx, demo.alice, made["gone"].id, "")
    ctx.feed.ended.clear()  # type: ignore[attr-defined]
    return made


KILL_CASES: list[tuple[str, str | None, str | None, set[str]]] = [
    ("admin", "alice", None, {"a1", "a2", "aw"}),
    ("admin", None, "demo", {"a1", "a2", "aw", "e1"}),
    ("admin", "alice", "demo", {"a1", "a2", "aw"}),
    ("bob", None, "demo", {"a1", "a2", "aw", "e1"}),  # owner of the API
    ("carol", "erin", "demo", {"e1"}),
    ("admin", "nobody", None, set()),
    ("admin", None, "other-api", set()),
]


def test_kill_switch_revokes_every_active_match_at_once(ctx: Context, demo: Demo) -> None:
    add_principal(ctx, "erin", "engineering")
    for actor, principal, api, hit in KILL_CASES:
        case = (actor, principal, api)
        # Start each case from a clean slate: nothing active.
        grants.kill_switch(ctx, demo.admin, principal=None, api="demo", reason="reset")
        made = _mixed_grants(ctx, demo)
        seq = last_seq(ctx.store)

        ended = grants.kill_switch(
            ctx, getattr(demo, actor), principal=principal, api=api, reason="incident 42"
        )

        want = {made[k].id for k in hit}
        assert {g.id for g in ended} == want, case
        assert all(g.status is GrantStatus.REVOKED and g.ended_by == actor for g in ended), case
        assert sorted(ctx.feed.ended) == sorted(want), case  # type: ignore[attr-defined]
        for key, grant in made.items():
            status = grants.get_grant(ctx, grant.id).status
            if key in hit:
                assert status is GrantStatus.REVOKED, case
            elif key == "gone":
                assert status is GrantStatus.RELEASED, case
            else:
                assert status is GrantStatus.ACTIVE, case
        assert event_types(ctx.store, after=seq) == ["grant.revoked"] * len(want), case


def test_kill_switch_needs_admin_or_owner(ctx: Context, demo: Demo) -> None:
    add_principal(ctx, "erin", "engineering")
    olga = add_principal(ctx, "olga", "payments-owners")
    made = _mixed_grants(ctx, demo)
    before = count_rows(ctx.store)
    for actor, principal, api in [
        (demo.alice, "alice", None),  # even about oneself
        (demo.bob, "alice", None),  # an API owner, but no API named
        (directory.get_principal(ctx, "erin"), None, "demo"),  # not an owner
        (olga, None, "demo"),  # owner of something else
        (olga, None, "nope"),  # no such API
    ]:
        with pytest.raises(Forbidden):
            grants.kill_switch(ctx, actor, principal=principal, api=api, reason="x")
    assert count_rows(ctx.store) == before
    for key, grant in made.items():
        if key != "gone":
            assert grants.get_grant(ctx, grant.id).status is GrantStatus.ACTIVE
    assert ctx.feed.ended == []  # type: ignore[attr-defined]


def test_kill_switch_needs_a_target_and_a_reason(ctx: Context, demo: Demo) -> None:
    grant = _grant(ctx, demo.alice)
    for principal, api, reason in [(None, None, "x"), ("alice", None, ""), (None, "demo", "  ")]:
        with pytest.raises(InvalidInput):
            grants.kill_switch(ctx, demo.admin, principal=principal, api=api, reason=reason)
    assert grants.get_grant(ctx, grant.id).status is GrantStatus.ACTIVE


def test_kill_switch_skips_grants_already_past_expiry(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    short = _grant(ctx, demo.alice, "1m")
    long = _grant(ctx, demo.alice, "10m")
    clock.advance(timedelta(minutes=2))
    ended = grants.kill_switch(ctx, demo.admin, principal="alice", api=None, reason="ir")
    assert [g.id for g in ended] == [long.id]
    assert grants.get_grant(ctx, short.id).status is GrantStatus.ACTIVE  # for the sweeper
    assert grants.expire_grants(ctx) == 1
    assert grants.get_grant(ctx, short.id).status is GrantStatus.EXPIRED


# -- expiry -------------------------------------------------------------------------


def test_expire_grants_marks_due_grants_and_audits_each(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    g5 = _grant(ctx, demo.alice, "5m")
    g10 = _grant(ctx, demo.alice, "10m")
    released = _grant(ctx, demo.alice, "5m")
    grants.revoke(ctx, demo.alice, released.id, "")

    clock.advance(timedelta(minutes=5) - timedelta(microseconds=1))
    assert grants.expire_grants(ctx) == 0
    seq = last_seq(ctx.store)
    clock.advance(timedelta(microseconds=1))
    assert grants.expire_grants(ctx) == 1
    swept = grants.get_grant(ctx, g5.id)
    assert swept.status is GrantStatus.EXPIRED
    assert swept.ended_at == clock.now()
    assert swept.ended_by == "system"
    events = [e for e in _events(ctx) if e.seq > seq]
    assert [(e.type, e.grant, e.actor) for e in events] == [("grant.expired", g5.id, "system")]
    assert grants.get_grant(ctx, released.id).status is GrantStatus.RELEASED
    assert grants.get_grant(ctx, g10.id).status is GrantStatus.ACTIVE

    assert grants.expire_grants(ctx) == 0  # idempotent: nothing twice
    assert last_seq(ctx.store) == events[-1].seq
    clock.advance(timedelta(hours=1))
    assert grants.expire_grants(ctx) == 1
    assert grants.get_grant(ctx, g10.id).status is GrantStatus.EXPIRED


def test_list_grants_active_filter_uses_the_clock(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    short = _grant(ctx, demo.alice, "1m")
    long = _grant(ctx, demo.alice, "10m")
    clock.advance(timedelta(minutes=1))
    assert [g.id for g in grants.list_grants(ctx, active=True)] == [long.id]
    assert [g.id for g in grants.list_grants(ctx, active=False)] == [short.id]
    assert {g.id for g in grants.list_grants(ctx)} == {short.id, long.id}


def test_expire_pending_marks_stale_requests_and_audits_each(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    def write() -> str:
        return access.create_request(
            ctx, demo.alice, api="demo", scopes=["PUT /x"], duration="5m", reason="w"
        ).request.id

    old = write()
    clock.advance(timedelta(hours=12))
    young = write()
    decided = write()
    access.deny(ctx, demo.bob, decided)
    clock.advance(timedelta(hours=12))  # old is now exactly 24h old

    seq = last_seq(ctx.store)
    assert access.expire_pending(ctx) == 1
    assert access.get_request(ctx, old).request.status is RequestStatus.EXPIRED
    assert access.get_request(ctx, old).request.decided_at == clock.now()
    assert access.get_request(ctx, young).request.status is RequestStatus.PENDING
    assert access.get_request(ctx, decided).request.status is RequestStatus.DENIED
    events = [e for e in _events(ctx) if e.seq > seq]
    assert [(e.type, e.request, e.principal) for e in events] == [("request.expired", old, "alice")]
    assert access.expire_pending(ctx) == 0
    assert last_seq(ctx.store) == events[-1].seq


def _events(ctx: Context) -> list:  # type: ignore[type-arg]
    with ctx.store.transaction() as tx:
        return list(tx.audit.stream())


def test_a_scheduled_grant_is_not_active_until_it_starts(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    start = clock.now() + timedelta(hours=1)
    view = access.create_request(
        ctx,
        demo.alice,
        api="demo",
        scopes=["GET /**"],
        duration="10m",
        reason="later",
        starts_at=start,
    )
    assert view.grant is not None
    assert grants.list_grants(ctx, active=True) == []
    assert grant_json(view.grant, clock.now())["status"] == "scheduled"
    clock.advance(timedelta(hours=1))
    assert [g.id for g in grants.list_grants(ctx, active=True)] == [view.grant.id]
    assert grant_json(view.grant, clock.now())["status"] == "active"
