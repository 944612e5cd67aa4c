"""Every way to abuse the approval workflow, through the service layer, on both databases.

Invariant 6 (no self-approval; distinct eligible approvers; a decided request stays
decided; 409 after deny, cancel or expiry) and its companions: narrowing only ever
narrows, an extension never widens, break glass is flagged, Idempotency-Key replays.

Every refusal is table-driven (:data:`REFUSALS`): the case prepares the state and hands
back the offending call; the test asserts the error's type and code and that nothing —
no request change, approval, grant or audit event — was written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest

from jitgate.clock import FrozenClock
from jitgate.domain.models import (
    AccessRequest,
    Api,
    Grant,
    GrantStatus,
    Injection,
    InjectionKind,
    Principal,
    PrincipalKind,
    RequestStatus,
)
from jitgate.errors import Conflict, Forbidden, InvalidInput, JitgateError, NotFound
from jitgate.policy import parse_policy
from jitgate.secrets import Secret
from jitgate.services import access, directory, grants
from jitgate.services.access import RequestView
from jitgate.services.context import Context
from jitgate.storage.audit_repo import AuditFilter

from .conftest import UPSTREAM, count_rows, event_types, last_seq

POLICY = """\
version: 1
defaults: {max_duration: 1h, pending_ttl: 24h}
rules:
  - name: reads
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["GET /**"]
    max_duration: 30m
    extensions: {max: 1, min_elapsed: 50%, max_total: 45m}
    approval: auto
  - name: quick-ttl
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["DELETE /**"]
    pending_ttl: 10m
    extensions: {max: 1}
    approval: {count: 1, from: {groups: [approvers]}}
  - name: two-denials
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["PATCH /**"]
    approval: {count: 1, from: {groups: [approvers]}, deny_count: 2}
  - name: other-team
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["PUT /teams/**"]
    approval:
      count: 1
      from: {groups: [approvers]}
      when: "reviewer.attributes.team != principal.attributes.team"
  - name: named
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["POST /named/**"]
    approval: {count: 1, from: {principals: [alice, bob]}}
  - name: two-step
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["POST /deploy/**"]
    approval:
      steps:
        - {name: peer, count: 1, from: {groups: [approvers]}}
        - {name: security, count: 1, from: {groups: [security]}}
  - name: sre-break-glass
    requesters: {groups: [sre]}
    apis: [demo]
    scopes: ["* /**"]
    approval: break_glass
  - name: writes
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["POST,PUT,PATCH,DELETE /**"]
    approval: {count: 2, from: {groups: [approvers]}}
"""

# id -> (groups, attributes, is_admin)
PEOPLE: dict[str, tuple[tuple[str, ...], dict[str, Any], bool]] = {
    "alice": (("engineering",), {}, False),
    "bob": (("approvers",), {}, False),
    "carol": (("approvers",), {}, False),
    "admin": ((), {}, True),
    "dave": (("engineering", "approvers"), {}, False),  # requester and approver
    "boss": (("engineering", "approvers"), {}, True),  # and administrator
    "erin": (("engineering",), {"team": "payments"}, False),
    "pam": (("approvers",), {"team": "payments"}, False),
    "sec": (("approvers",), {"team": "security"}, False),
    "sid": (("security",), {}, False),
    "dana": (("approvers", "security"), {}, False),  # eligible for both steps
    "ron": (("sre",), {}, False),
}


@dataclass
class World:
    ctx: Context
    clock: FrozenClock
    p: dict[str, Principal]

    def request(
        self, who: str = "alice", scopes: tuple[str, ...] = ("POST /items",), duration: str = "30m"
    ) -> str:
        view = access.create_request(
            self.ctx, self.p[who], api="demo", scopes=list(scopes), duration=duration, reason="r"
        )
        assert view.request.status is RequestStatus.PENDING, view.request.decision.reasons
        return view.request.id

    def grant(self, scopes: tuple[str, ...] = ("GET /items",), duration: str = "30m") -> Grant:
        view = access.create_request(
            self.ctx, self.p["alice"], api="demo", scopes=list(scopes), duration=duration,
            reason="look",
        )  # fmt: skip
        assert view.grant is not None, view.request.decision.reasons
        return view.grant

    def update(self, pid: str, **changes: Any) -> None:
        with self.ctx.store.transaction() as tx:
            current = tx.directory.get_principal(pid)
            assert current is not None
            tx.directory.update_principal(replace(current, **changes))

    def approve(self, who: str, rid: str, **kwargs: Any) -> RequestView:
        return access.approve(self.ctx, self.p[who], rid, **kwargs)

    def deny(self, who: str, rid: str) -> RequestView:
        return access.deny(self.ctx, self.p[who], rid)

    def cancel(self, who: str, rid: str) -> RequestView:
        return access.cancel(self.ctx, self.p[who], rid)


POLICY_OBJECT = parse_policy(POLICY, "test.yaml")
DEMO_API = Api("demo", UPSTREAM, Injection(InjectionKind.HEADER), "dev", frozenset({"approvers"}))


@pytest.fixture
def w(ctx: Context, clock: FrozenClock) -> World:
    """The people and the API, inserted in one transaction (no per-principal commit)."""
    ctx.replace_policy(POLICY_OBJECT)
    with ctx.store.transaction() as tx:
        for pid, (groups, attributes, is_admin) in PEOPLE.items():
            person = Principal(
                pid, PrincipalKind.USER, pid, frozenset(groups), attributes, is_admin=is_admin
            )
            tx.directory.insert_principal(person, clock.now())
        secret = ctx.box.encrypt_secret(Secret("sk_test_0123456789"), "api:demo")
        tx.directory.insert_api(DEMO_API, secret, clock.now())
    return World(ctx, clock, {p.id: p for p in directory.list_principals(ctx)})


def snapshot(ctx: Context) -> tuple[object, ...]:
    """Everything a refused call must leave untouched."""
    with ctx.store.read() as tx:
        requests = tx.access.list_requests(limit=None)
        votes = [tx.access.list_approvals(r.id) for r in requests]
        grant_rows = tx.access.list_grants(limit=None)
    return count_rows(ctx.store), last_seq(ctx.store), requests, votes, grant_rows


# -- refusals ---------------------------------------------------------------------------

Prepare = Callable[[World], Callable[[], object]]


def _self_approve(requester: str, scopes: tuple[str, ...] = ("POST /items",)) -> Prepare:
    def prepare(w: World) -> Callable[[], object]:
        rid = w.request(requester, scopes)
        return lambda: w.approve(requester, rid)

    return prepare


def _twice(first: str, second: str, scopes: tuple[str, ...] = ("POST /items",)) -> Prepare:
    def prepare(w: World) -> Callable[[], object]:
        rid = w.request("alice", scopes)
        assert w.approve(first, rid).request.status is RequestStatus.PENDING
        return lambda: getattr(w, second)(first, rid)

    return prepare


def _removed_before_voting(w: World) -> Callable[[], object]:
    rid = w.request()
    w.update("bob", groups=frozenset())
    return lambda: w.approve("bob", rid)  # w.p["bob"] is the stale, logged-in object


def _disabled(w: World) -> Callable[[], object]:
    rid = w.request()
    directory.set_disabled(w.ctx, w.p["admin"], "bob", disabled=True)
    return lambda: w.approve("bob", rid)


def _forged_groups(w: World) -> Callable[[], object]:
    rid = w.request()
    forged = replace(w.p["ron"], groups=frozenset({"approvers"}))
    return lambda: access.approve(w.ctx, forged, rid)


def _forged_self(w: World) -> Callable[[], object]:
    rid = w.request()
    alias = replace(w.p["bob"], id="alice")  # bob's groups, alice's id
    return lambda: access.approve(w.ctx, alias, rid)


def _decider(
    who: str, act: str, scopes: tuple[str, ...] = ("POST /items",), requester: str = "alice"
) -> Prepare:
    def prepare(w: World) -> Callable[[], object]:
        rid = w.request(requester, scopes)
        return lambda: getattr(w, act)(who, rid)

    return prepare


def _expired(act: str, who: str, scopes: tuple[str, ...], after: timedelta) -> Prepare:
    def prepare(w: World) -> Callable[[], object]:
        rid = w.request(scopes=scopes)
        w.clock.advance(after)
        return lambda: getattr(w, act)(who, rid)

    return prepare


def _after(close: Callable[[World, str], object], act: str, who: str) -> Prepare:
    def prepare(w: World) -> Callable[[], object]:
        rid = w.request(scopes=("DELETE /items",))
        close(w, rid)
        return lambda: getattr(w, act)(who, rid)

    return prepare


def _swept(w: World, rid: str) -> None:
    w.clock.advance(timedelta(minutes=10))
    assert access.expire_pending(w.ctx) == 1


def _narrow(scopes: list[str] | None, duration: str | None, requested: tuple[str, ...]) -> Prepare:
    def prepare(w: World) -> Callable[[], object]:
        rid = w.request(scopes=requested)
        return lambda: w.approve("bob", rid, scopes=scopes, duration=duration)

    return prepare


def _stale_terms(w: World) -> Callable[[], object]:
    rid = w.request(scopes=("POST /items", "DELETE /items"))
    shown = access.get_request(w.ctx, rid).terms_hash
    w.approve("bob", rid, scopes=["POST /items"])  # narrows: the terms change
    return lambda: w.approve("carol", rid, terms=shown)


def _forged_terms(w: World) -> Callable[[], object]:
    rid = w.request()
    other = w.request()
    hash_of_other = access.get_request(w.ctx, other).terms_hash
    return lambda: w.approve("bob", rid, terms=hash_of_other)


def _extend(
    who: str, scopes: list[str] | None, before: Callable[[World, Grant], object]
) -> Prepare:
    def prepare(w: World) -> Callable[[], object]:
        grant = w.grant(("GET /items", "GET /items/*"))
        w.clock.advance(timedelta(minutes=16))
        before(w, grant)
        return lambda: access.extend(
            w.ctx, w.p[who], grant.id, duration="10m", reason="more", scopes=scopes
        )

    return prepare


def _nothing(w: World, grant: Grant) -> None:
    return None


def _released(w: World, grant: Grant) -> None:
    grants.revoke(w.ctx, w.p["alice"], grant.id, "done")


def _ran_out(w: World, grant: Grant) -> None:
    w.clock.advance(timedelta(minutes=14))  # 30m: the grant has expired


def _idempotent(key: str, second: dict[str, Any]) -> Prepare:
    def prepare(w: World) -> Callable[[], object]:
        first: dict[str, Any] = {
            "api": "demo",
            "scopes": ["GET /items"],
            "duration": "5m",
            "reason": "r",
        }
        access.create_request(w.ctx, w.p["alice"], idempotency_key="k-1", **first)
        return lambda: access.create_request(
            w.ctx, w.p["alice"], idempotency_key=key, **{**first, **second}
        )

    return prepare


TEAMS = ("PUT /teams/payments",)
DELETE = ("DELETE /items",)
DEPLOY = ("POST /deploy/app",)
TEN_MINUTES = timedelta(minutes=10)

REFUSALS: list[tuple[str, Prepare, type[JitgateError], str]] = [
    # self-approval, in every disguise
    ("self-approve", _self_approve("alice"), Forbidden, "self-approval"),
    ("self-approve-in-approver-group", _self_approve("dave"), Forbidden, "self-approval"),
    ("self-approve-admin-approver", _self_approve("boss"), Forbidden, "self-approval"),
    ("self-approve-listed-principal", _self_approve("alice", ("POST /named/x",)), Forbidden,
     "self-approval"),
    ("self-approve-own-step", _self_approve("dave", DEPLOY), Forbidden, "self-approval"),
    ("self-deny", _decider("alice", "deny"), Forbidden, "self-approval"),
    ("self-via-forged-object", _forged_self, Forbidden, "self-approval"),
    # not eligible
    ("removed-from-group-before-voting", _removed_before_voting, Forbidden, "not-eligible"),
    ("disabled-approver", _disabled, Forbidden, "principal-disabled"),
    ("forged-groups", _forged_groups, Forbidden, "not-eligible"),
    ("admin-is-not-approver", _decider("admin", "approve"), Forbidden, "not-eligible"),
    ("not-a-listed-principal", _decider("carol", "approve", ("POST /named/x",)), Forbidden,
     "not-eligible"),
    ("reviewer-same-team", _decider("pam", "approve", TEAMS, "erin"), Forbidden, "not-eligible"),
    ("reviewer-no-attribute-fails-closed", _decider("bob", "approve", TEAMS, "erin"), Forbidden,
     "not-eligible"),
    ("cancel-by-approver", _decider("bob", "cancel"), Forbidden, "not-requester"),
    # double counting
    ("same-approver-twice", _twice("bob", "approve"), Conflict, "already-approved"),
    ("approve-then-deny", _twice("bob", "deny"), Conflict, "already-approved"),
    ("same-person-second-step", _twice("dana", "approve", DEPLOY), Conflict, "already-approved"),
    # expiry: the policy default, and a rule's own pending_ttl
    ("approve-after-default-ttl", _expired("approve", "bob", ("POST /items",),
     timedelta(hours=24)), Conflict, "request-expired"),
    ("approve-after-rule-ttl", _expired("approve", "bob", DELETE, TEN_MINUTES), Conflict,
     "request-expired"),
    ("deny-after-rule-ttl", _expired("deny", "bob", DELETE, TEN_MINUTES), Conflict,
     "request-expired"),
    ("cancel-after-rule-ttl", _expired("cancel", "alice", DELETE, TEN_MINUTES), Conflict,
     "request-expired"),
    # a decided request stays decided
    ("approve-after-deny", _after(lambda w, r: w.deny("bob", r), "approve", "carol"), Conflict,
     "request-decided"),
    ("approve-after-cancel", _after(lambda w, r: w.cancel("alice", r), "approve", "bob"),
     Conflict, "request-decided"),
    ("deny-after-approve", _after(lambda w, r: w.approve("bob", r), "deny", "carol"), Conflict,
     "request-decided"),
    ("approve-after-sweep", _after(_swept, "approve", "bob"), Conflict, "request-decided"),
    ("cancel-after-sweep", _after(_swept, "cancel", "alice"), Conflict, "request-decided"),
    # narrowing never widens
    ("widen-scopes", _narrow(["POST /items", "DELETE /items"], None, ("POST /items",)),
     InvalidInput, "approval-widens"),
    ("widen-path", _narrow(["POST /items/*"], None, ("POST /items/1",)), InvalidInput,
     "approval-widens"),
    ("widen-methods", _narrow(["POST,PUT /items"], None, ("POST /items",)), InvalidInput,
     "approval-widens"),
    ("widen-duration", _narrow(None, "45m", ("POST /items",)), InvalidInput, "approval-widens"),
    ("widen-one-of-two", _narrow(["POST /items", "PUT /x"], "10m", ("POST /items",)),
     InvalidInput, "approval-widens"),
    ("narrow-to-zero", _narrow(None, "0s", ("POST /items",)), InvalidInput, "invalid-input"),
    ("narrow-to-nothing", _narrow([], None, ("POST /items",)), InvalidInput, "invalid-input"),
    ("stale-terms", _stale_terms, Conflict, "request-changed"),
    ("terms-of-another-request", _forged_terms, Conflict, "request-changed"),
    # an extension never widens, and only the grantee extends a live grant
    ("extension-wider-scope", _extend("alice", ["GET /**"], _nothing), InvalidInput,
     "extension-widens"),
    ("extension-other-method", _extend("alice", ["POST /items"], _nothing), InvalidInput,
     "extension-widens"),
    ("extension-one-wider-of-two", _extend("alice", ["GET /items", "GET /other"], _nothing),
     InvalidInput, "extension-widens"),
    ("extension-by-non-grantee", _extend("bob", None, _nothing), Forbidden, "not-grantee"),
    ("extension-of-released-grant", _extend("alice", None, _released), Conflict, "grant-ended"),
    ("extension-of-expired-grant", _extend("alice", None, _ran_out), Conflict, "grant-ended"),
    # Idempotency-Key
    ("idempotency-key-other-body", _idempotent("k-1", {"reason": "other"}), InvalidInput,
     "idempotency-key-reused"),
    ("idempotency-key-other-scopes", _idempotent("k-1", {"scopes": ["GET /**"]}), InvalidInput,
     "idempotency-key-reused"),
    ("idempotency-key-empty", _idempotent("", {}), InvalidInput, "invalid-input"),
    ("idempotency-key-control-chars", _idempotent("k\n2", {}), InvalidInput, "invalid-input"),
    ("idempotency-key-too-long", _idempotent("k" * 201, {}), InvalidInput, "invalid-input"),
    ("unknown-request", lambda w: lambda: w.approve("bob", "req_nope"), NotFound,
     "request-not-found"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("prepare", "error", "code"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS]
)
def test_refusal_writes_nothing(
    w: World, prepare: Prepare, error: type[JitgateError], code: str
) -> None:
    call = prepare(w)
    before = snapshot(w.ctx)
    with pytest.raises(error) as caught:
        call()
    assert type(caught.value) is error
    assert caught.value.code == code, caught.value.detail
    assert snapshot(w.ctx) == before


# -- counting: who counts, and how often ---------------------------------------------------


def _types(w: World, rid: str) -> list[str]:
    with w.ctx.store.read() as tx:
        return [e.type for e in tx.audit.query(AuditFilter(request=rid), limit=1000)]


def _grant_rows(w: World) -> int:
    return count_rows(w.ctx.store)["grants"]


def test_a_vote_stops_counting_when_its_approver_leaves_after_voting(w: World) -> None:
    rid = w.request()
    assert w.approve("bob", rid).request.status is RequestStatus.PENDING
    w.update("bob", groups=frozenset({"engineering"}))
    view = w.approve("carol", rid)
    assert view.request.status is RequestStatus.PENDING  # bob's vote no longer counts
    assert [a.approver for a in view.approvals] == ["bob", "carol"]  # but is still recorded
    assert _grant_rows(w) == 0
    done = w.approve("pam", rid)
    assert done.request.status is RequestStatus.APPROVED
    assert done.grant is not None
    assert _grant_rows(w) == 1


def test_a_disabled_voter_stops_counting(w: World) -> None:
    rid = w.request()
    w.approve("bob", rid)
    directory.set_disabled(w.ctx, w.p["admin"], "bob", disabled=True)
    assert w.approve("carol", rid).request.status is RequestStatus.PENDING
    assert w.approve("pam", rid).request.status is RequestStatus.APPROVED


def test_one_person_counts_once_across_two_steps(w: World) -> None:
    """dana is in both step groups: she fills one step, never both."""
    rid = w.request(scopes=DEPLOY)
    view = w.approve("dana", rid)
    assert view.request.status is RequestStatus.PENDING
    assert view.grant is None
    # a second peer does not help: the security step needs someone else
    rid2 = w.request(scopes=DEPLOY)
    w.approve("bob", rid2)
    assert w.approve("carol", rid2).request.status is RequestStatus.PENDING
    done = w.approve("sid", rid2)
    assert done.request.status is RequestStatus.APPROVED
    assert _types(w, rid2).count("grant.issued") == 1


def test_assignment_is_not_greedy(w: World) -> None:
    """dana (peer or security) first, then bob (peer only): dana must be the security."""
    rid = w.request(scopes=DEPLOY)
    w.approve("dana", rid)
    view = w.approve("bob", rid)
    assert view.request.status is RequestStatus.APPROVED
    assert view.grant is not None
    with w.ctx.store.read() as tx:
        approved = [
            e.data
            for e in tx.audit.query(AuditFilter(request=rid, type="request.approved"), limit=10)
        ]
    assert approved[-1]["steps"] == [
        {"name": "peer", "approvals": 1, "required": 1},
        {"name": "security", "approvals": 1, "required": 1},
    ]
    assert approved[0]["approvals"] == 1


def test_deny_threshold(w: World) -> None:
    rid = w.request(scopes=("PATCH /items",))
    first = w.deny("bob", rid)
    assert first.request.status is RequestStatus.PENDING
    assert _types(w, rid)[-1] == "request.deny_voted"
    second = w.deny("carol", rid)
    assert second.request.status is RequestStatus.DENIED
    assert _types(w, rid)[-1] == "request.denied"
    assert _types(w, rid).count("request.denied") == 1
    with pytest.raises(Conflict):
        w.approve("pam", rid)
    assert _grant_rows(w) == 0


def test_a_deny_vote_from_someone_who_left_does_not_count(w: World) -> None:
    rid = w.request(scopes=("PATCH /items",))
    w.deny("bob", rid)
    w.update("bob", groups=frozenset())
    assert w.deny("carol", rid).request.status is RequestStatus.PENDING
    assert w.approve("pam", rid).request.status is RequestStatus.APPROVED


def test_reviewer_condition_admits_another_team(w: World) -> None:
    rid = w.request("erin", TEAMS)
    view = w.approve("sec", rid)
    assert view.request.status is RequestStatus.APPROVED
    assert view.grant is not None


# -- narrowing ---------------------------------------------------------------------------


def test_narrowing_voids_earlier_approvals_and_binds_the_grant(w: World) -> None:
    rid = w.request(scopes=("POST /items", "DELETE /items/*"), duration="30m")
    w.approve("bob", rid)
    shown = access.get_request(w.ctx, rid).terms_hash
    view = w.approve("carol", rid, terms=shown, scopes=["DELETE /items/1"], duration="10m")
    assert view.request.status is RequestStatus.PENDING  # bob approved other terms
    assert view.request.terms == (("DELETE /items/1",), timedelta(minutes=10))
    assert view.terms_hash != shown
    with w.ctx.store.read() as tx:
        (last,) = tx.audit.query(AuditFilter(request=rid), after=last_seq(w.ctx.store) - 1)
    assert last.data["narrowed_to"] == {"scopes": ["DELETE /items/1"], "duration_seconds": 600}
    assert last.data["approvals"] == 1
    done = w.approve("pam", rid, terms=view.terms_hash)
    assert done.request.status is RequestStatus.APPROVED
    assert done.grant is not None
    assert done.grant.scopes == ("DELETE /items/1",)
    assert done.grant.expires_at - done.grant.not_before == timedelta(minutes=10)
    # the request as filed is kept; only the approved terms changed
    assert done.request.scopes == ("POST /items", "DELETE /items/*")


def test_an_approver_of_voided_terms_may_approve_the_narrowed_ones(w: World) -> None:
    rid = w.request(scopes=("POST /items", "DELETE /items/*"), duration="30m")
    w.approve("bob", rid)
    narrowed = w.approve("carol", rid, duration="10m")
    assert narrowed.request.status is RequestStatus.PENDING  # bob's vote was for 30m
    with pytest.raises(Conflict) as caught:
        w.approve("carol", rid)  # carol already approved these very terms
    assert caught.value.code == "already-approved"
    again = w.approve("bob", rid, terms=narrowed.terms_hash)
    assert again.request.status is RequestStatus.APPROVED
    assert again.grant is not None
    assert again.grant.expires_at - again.grant.not_before == timedelta(minutes=10)
    assert sorted((v.approver, v.terms_hash) for v in again.approvals) == [
        ("bob", narrowed.terms_hash),
        ("carol", narrowed.terms_hash),
    ]


def test_restating_the_same_terms_is_not_narrowing(w: World) -> None:
    rid = w.request(scopes=("POST /items",), duration="30m")
    w.approve("bob", rid)
    view = w.approve("carol", rid, scopes=["POST /items"], duration="30m")
    assert view.request.status is RequestStatus.APPROVED


# -- expiry ------------------------------------------------------------------------------


def test_rule_pending_ttl_boundary_and_sweep(w: World) -> None:
    early = w.request(scopes=DELETE)
    late = w.request(scopes=DELETE)
    slow = w.request()  # the default 24h
    w.clock.advance(TEN_MINUTES - timedelta(microseconds=1))
    assert w.approve("bob", early).request.status is RequestStatus.APPROVED
    w.clock.advance(timedelta(microseconds=1))
    with pytest.raises(Conflict) as caught:
        w.approve("bob", late)
    assert caught.value.code == "request-expired"
    assert access.expire_pending(w.ctx) == 1
    assert access.get_request(w.ctx, late).request.status is RequestStatus.EXPIRED
    assert access.get_request(w.ctx, slow).request.status is RequestStatus.PENDING
    with w.ctx.store.read() as tx:
        (expired,) = tx.audit.query(AuditFilter(request=late, type="request.expired"))
    assert expired.data == {"pending_ttl_seconds": 600}


# -- break glass -------------------------------------------------------------------------


def test_break_glass_grants_at_once_flagged_for_review(w: World) -> None:
    view = access.create_request(
        w.ctx, w.p["ron"], api="demo", scopes=["DELETE /**"], duration="1h", reason="outage"
    )
    assert view.request.status is RequestStatus.APPROVED
    assert view.request.decision.break_glass
    assert view.grant is not None
    assert view.grant.needs_review
    assert view.grant.reviewed_at is None
    with w.ctx.store.read() as tx:
        (issued,) = tx.audit.query(AuditFilter(type="grant.issued", grant=view.grant.id))
    assert issued.data["break_glass"] is True
    assert issued.data["needs_review"] is True
    assert issued.data["reason"] == "outage"
    assert issued.actor == "policy"
    # an ordinary grant is not flagged
    plain = w.grant()
    assert not plain.needs_review
    with w.ctx.store.read() as tx:
        (ordinary,) = tx.audit.query(AuditFilter(type="grant.issued", grant=plain.id))
    assert "break_glass" not in ordinary.data


# -- Idempotency-Key ---------------------------------------------------------------------


def test_idempotency_key_replays_the_first_answer(w: World) -> None:
    body: dict[str, Any] = {"api": "demo", "scopes": ["POST /items"], "duration": "30m"}
    first = access.create_request(w.ctx, w.p["alice"], reason="r", idempotency_key="abc", **body)
    assert not first.replayed
    before = snapshot(w.ctx)
    again = access.create_request(w.ctx, w.p["alice"], reason="r", idempotency_key="abc", **body)
    assert again.replayed
    assert again.request == first.request
    assert snapshot(w.ctx) == before
    # after a decision, a replay shows the request as it is now
    w.approve("bob", first.request.id)
    w.approve("carol", first.request.id)
    later = access.create_request(w.ctx, w.p["alice"], reason="r", idempotency_key="abc", **body)
    assert later.replayed
    assert later.request.status is RequestStatus.APPROVED
    assert later.grant is not None
    # the key is per requester: erin's "abc" is her own request
    erin = access.create_request(w.ctx, w.p["erin"], reason="r", idempotency_key="abc", **body)
    assert not erin.replayed
    assert erin.request.id != first.request.id


# -- extensions --------------------------------------------------------------------------


def _extend_call(w: World, grant: Grant, duration: str = "10m", **kw: Any) -> RequestView:
    return access.extend(w.ctx, w.p["alice"], grant.id, duration=duration, reason="more", **kw)


def _denied_with(view: RequestView, fragment: str) -> None:
    assert view.request.status is RequestStatus.DENIED
    assert view.grant is None
    assert any(fragment in reason for reason in view.request.decision.reasons), (
        view.request.decision.reasons
    )


def test_extension_limits(w: World) -> None:
    grant = w.grant(("GET /items", "GET /items/*"))
    grants_before = _grant_rows(w)

    w.clock.advance(timedelta(minutes=14))  # under half of 30m
    _denied_with(_extend_call(w, grant), "once 50% of the grant has elapsed")
    w.clock.advance(timedelta(minutes=1))  # exactly half

    _denied_with(_extend_call(w, grant, "20m"), "caps a grant and its extensions at 45m")
    _denied_with(_extend_call(w, grant, "31m"), "allows at most 30m")  # the rule's max
    assert _grant_rows(w) == grants_before

    narrower = _extend_call(w, grant, "15m", scopes=["GET /items"])
    assert narrower.request.status is RequestStatus.APPROVED
    assert narrower.request.extends_grant == grant.id
    ext = narrower.grant
    assert ext is not None
    assert ext.scopes == ("GET /items",)
    assert ext.extends == grant.id
    assert ext.not_before == grant.expires_at  # takes over where the grant ends
    assert ext.expires_at == grant.expires_at + timedelta(minutes=15)

    # the continuation is itself past half-way: the chain has had its one extension
    w.clock.advance(timedelta(minutes=15 + 8))
    _denied_with(_extend_call(w, ext, "1m"), "allows at most 1; this grant has had 1")
    assert _grant_rows(w) == grants_before + 1


def test_a_grant_cannot_be_extended_twice_side_by_side(w: World) -> None:
    """max: 1 holds per grant, not only per chain: a second extension of the same grant
    would be a second live continuation (and survive revoking the first)."""
    grant = w.grant()
    w.clock.advance(timedelta(minutes=15))
    first = _extend_call(w, grant)
    assert first.grant is not None
    second = _extend_call(w, grant)
    assert second.request.status is RequestStatus.DENIED, "extended twice"
    assert second.grant is None
    with w.ctx.store.read() as tx:
        assert [g.id for g in tx.access.list_extending(grant.id)] == [first.grant.id]


def test_two_pending_extensions_of_one_grant_cannot_both_be_granted(w: World) -> None:
    """Filed before either is approved, both pass the filing check; the second approval
    must still not open a second continuation of the same grant."""
    rid = w.request(scopes=DELETE)
    grant = w.approve("bob", rid).grant
    assert grant is not None
    w.clock.advance(timedelta(minutes=15))
    first = access.extend(w.ctx, w.p["alice"], grant.id, duration="10m", reason="more")
    second = access.extend(w.ctx, w.p["alice"], grant.id, duration="10m", reason="more")
    assert first.request.status is second.request.status is RequestStatus.PENDING
    assert w.approve("bob", first.request.id).grant is not None
    before = snapshot(w.ctx)
    with pytest.raises(Conflict) as caught:
        w.approve("carol", second.request.id)
    assert caught.value.code == "grant-already-extended"
    assert snapshot(w.ctx) == before
    with w.ctx.store.read() as tx:
        assert len(tx.access.list_extending(grant.id)) == 1


def test_extension_events_mark_the_chain(w: World) -> None:
    grant = w.grant()
    w.clock.advance(timedelta(minutes=15))
    view = _extend_call(w, grant)
    assert view.grant is not None
    types = _types(w, view.request.id)
    assert types == ["request.created", "request.decided", "grant.issued"]
    with w.ctx.store.read() as tx:
        (created,) = tx.audit.query(AuditFilter(request=view.request.id, type="request.created"))
        (issued,) = tx.audit.query(AuditFilter(request=view.request.id, type="grant.issued"))
    assert created.data["extends_grant"] == grant.id
    assert issued.data["extends"] == grant.id
    assert view.grant.status is GrantStatus.ACTIVE


def test_every_request_row_has_its_created_and_decided_events(w: World) -> None:
    """A cross-check after a busy session: no request without its audit trail."""
    rid = w.request()
    w.approve("bob", rid)
    w.approve("carol", rid)
    w.request(scopes=DELETE)
    w.grant()
    with w.ctx.store.read() as tx:
        requests: list[AccessRequest] = tx.access.list_requests(limit=None)
    for request in requests:
        types = _types(w, request.id)
        assert types[:2] == ["request.created", "request.decided"], request.id
        assert types.count("grant.issued") == (1 if request.grant_id else 0)
    assert event_types(w.ctx.store).count("grant.issued") == _grant_rows(w)
