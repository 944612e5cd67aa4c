"""Approval workflows over HTTP: Idempotency-Key, narrowing bound to a terms hash,
extensions, break-glass review, and the revocation cascade over extensions."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from jitgate.clock import FrozenClock
from jitgate.policy import parse_policy
from jitgate.services.context import Context
from jitgate.storage.tables import access_requests
from tests.conftest import RecordingFeed
from tests.control.conftest import Control, assert_problem, snapshot

POLICY = """\
version: 1
defaults: {max_duration: 1h, pending_ttl: 24h}
rules:
  - name: reads
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["GET /**"]
    max_duration: 1h
    approval: auto
    extensions: {max: 1, min_elapsed: 50%}
  - name: writes
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["POST,PUT,PATCH,DELETE /**"]
    max_duration: 1h
    approval: {count: 2, from: {groups: [approvers]}}
  - name: break-glass
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["* /**"]
    max_duration: 1h
    approval: break_glass
"""

READ = {"api": "demo", "scopes": ["GET /v1/**"], "duration": "20m", "reason": "debug 42"}
WRITE = {"api": "demo", "scopes": ["POST /v1/orders/**"], "duration": "30m", "reason": "fix 42"}


@pytest.fixture
def api(control: Control, ctx: Context) -> Control:
    """``control`` under :data:`POLICY` (two-person writes, extensible reads, break glass)."""
    ctx.replace_policy(parse_policy(POLICY, "approval-surface.yaml"))
    return control


def request_count(ctx: Context) -> int:
    with ctx.store.read() as tx:
        query = select(func.count()).select_from(access_requests)
        return int(tx.connection.execute(query).scalar_one())


def file(api: Control, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else None
    return api.post("/v1/requests", "alice", json=body, headers=headers)


# Idempotency-Key -----------------------------------------------------------------------


def test_a_repeat_with_the_same_key_answers_200_with_the_same_body(
    api: Control, ctx: Context
) -> None:
    first = file(api, READ, "key-1")
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = file(api, READ, "key-1")
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert again.json() == first.json()
    assert request_count(ctx) == 1
    assert file(api, READ).status_code == 201, "no key: a new request each time"
    bob = api.post("/v1/requests", "bob", json=READ, headers={"Idempotency-Key": "key-1"})
    assert bob.status_code in (201, 200)
    assert bob.json()["id"] != first.json()["id"], "keys are per requester"


def test_the_same_key_with_another_body_is_refused(api: Control, ctx: Context) -> None:
    assert file(api, READ, "key-2").status_code == 201
    before = snapshot(ctx.store)
    other = file(api, {**READ, "duration": "10m"}, "key-2")
    assert_problem(other, 422, "idempotency-key-reused")
    assert snapshot(ctx.store) == before


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_a_bad_key_is_a_422(api: Control, ctx: Context, key: str) -> None:
    before = snapshot(ctx.store)
    assert_problem(file(api, READ, key), 422)
    assert snapshot(ctx.store) == before


def test_concurrent_calls_with_one_key_file_one_request(api: Control, ctx: Context) -> None:
    """On PostgreSQL the losers hit the unique key and answer as the winner did."""
    calls = 6
    barrier = threading.Barrier(calls)
    answers: list[httpx.Response] = []

    def call() -> None:
        barrier.wait(timeout=30)
        answers.append(file(api, WRITE, "race"))

    threads = [threading.Thread(target=call) for _ in range(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(answers) == calls
    assert sorted(a.status_code for a in answers) == [200] * (calls - 1) + [201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert request_count(ctx) == 1


# Narrowing -------------------------------------------------------------------------------


def pending(api: Control) -> dict[str, Any]:
    response = file(api, WRITE)
    assert response.status_code == 201
    created: dict[str, Any] = response.json()
    assert created["status"] == "pending"
    assert created["approved_scopes"] is None
    assert created["approved_duration"] is None
    assert len(created["terms_hash"]) == 64
    return created


def approve(api: Control, request_id: str, who: str, **body: Any) -> httpx.Response:
    return api.post(f"/v1/requests/{request_id}/approve", who, json=body)


def test_approvers_may_narrow_and_the_grant_has_the_narrowed_terms(
    api: Control, clock: FrozenClock
) -> None:
    created = pending(api)
    first = approve(
        api,
        created["id"],
        "bob",
        terms_hash=created["terms_hash"],
        scopes=["POST /v1/orders/42"],
        duration="10m",
    )
    assert first.status_code == 200, first.text
    narrowed = first.json()
    assert narrowed["status"] == "pending"
    assert narrowed["approved_scopes"] == ["POST /v1/orders/42"]
    assert (narrowed["approved_duration"], narrowed["approved_duration_seconds"]) == ("10m", 600)
    assert narrowed["scopes"] == WRITE["scopes"], "what was asked stays on record"
    assert narrowed["terms_hash"] != created["terms_hash"]
    assert narrowed["approvals"][0]["terms_hash"] == narrowed["terms_hash"]

    done = approve(api, created["id"], "carol", terms_hash=narrowed["terms_hash"]).json()
    assert done["status"] == "approved"
    assert done["grant"]["scopes"] == ["POST /v1/orders/42"]
    expires = clock.now() + timedelta(minutes=10)
    assert done["grant"]["expires_at"] == expires.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    "body",
    [
        {"scopes": ["POST /v1/**"]},
        {"scopes": ["POST /v1/orders/**", "DELETE /v1/orders/**"]},
        {"duration": "31m"},
        {"duration": 3600},
    ],
)
def test_approving_wider_than_asked_is_a_422_and_writes_nothing(
    api: Control, ctx: Context, body: dict[str, Any]
) -> None:
    created = pending(api)
    before = snapshot(ctx.store)
    assert_problem(approve(api, created["id"], "bob", **body), 422, "approval-widens")
    assert snapshot(ctx.store) == before


def test_an_approval_for_terms_that_changed_since_is_a_409(api: Control, ctx: Context) -> None:
    created = pending(api)
    approve(api, created["id"], "bob", duration="10m")
    before = snapshot(ctx.store)
    stale = approve(api, created["id"], "carol", terms_hash=created["terms_hash"])
    assert_problem(stale, 409, "request-changed")
    assert snapshot(ctx.store) == before
    assert_problem(approve(api, created["id"], "carol", terms_hash="0" * 64), 409)


@pytest.mark.parametrize(
    "body",
    [
        {"scopes": []},
        {"scopes": "POST /v1/orders/1"},
        {"scopes": ["POST /" + "a" * 600]},
        {"scopes": ["POST /v1/orders/1"] * 21},
        {"duration": True},
        {"duration": "x" * 33},
        {"terms_hash": "f" * 65},
        {"comment": "c" * 2001},
        {"approve": True},
        {"scopes": ["not a scope"]},
        {"duration": "-5m"},
    ],
)
def test_bad_approval_bodies_are_4xx(api: Control, ctx: Context, body: dict[str, Any]) -> None:
    created = pending(api)
    before = snapshot(ctx.store)
    response = approve(api, created["id"], "bob", **body)
    assert_problem(response, 422)
    assert snapshot(ctx.store) == before


# Extensions ------------------------------------------------------------------------------


def extend(api: Control, grant_id: str, who: str = "alice", **body: Any) -> httpx.Response:
    return api.post(
        f"/v1/grants/{grant_id}/extend", who, json={"duration": "20m", "reason": "more", **body}
    )


def read_grant(api: Control) -> dict[str, Any]:
    created = file(api, READ).json()
    assert created["status"] == "approved", created
    grant: dict[str, Any] = created["grant"]
    return grant


def test_an_extension_continues_the_grant_where_it_ends(api: Control, clock: FrozenClock) -> None:
    grant = read_grant(api)
    early = extend(api, grant["id"])
    assert early.status_code == 201
    assert early.json()["status"] == "denied"
    assert any("50%" in r for r in early.json()["decision"]["reasons"]), early.json()

    clock.advance(timedelta(minutes=10))
    response = extend(api, grant["id"], scopes=["GET /v1/orders/**"])
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/v1/requests/{response.json()['id']}"
    extension = response.json()
    assert extension["status"] == "approved"
    assert extension["extends_grant"] == grant["id"]
    follow = extension["grant"]
    assert follow["extends"] == grant["id"]
    assert follow["not_before"] == grant["expires_at"]
    assert follow["scopes"] == ["GET /v1/orders/**"]
    assert follow["status"] == "scheduled"
    assert api.ok("GET", f"/v1/grants/{follow['id']}", "bob")["extends"] == grant["id"]

    again = extend(api, grant["id"]).json()
    assert again["status"] == "denied"
    assert any("already extended" in r for r in again["decision"]["reasons"]), again
    clock.advance(timedelta(minutes=25))  # well into the extension
    second = extend(api, follow["id"], scopes=["GET /v1/orders/**"]).json()
    assert second["status"] == "denied"
    assert any("at most 1" in r for r in second["decision"]["reasons"]), second


def test_an_extension_never_widens_and_is_the_grantees_own(
    api: Control, ctx: Context, clock: FrozenClock
) -> None:
    grant = read_grant(api)
    clock.advance(timedelta(minutes=10))
    before = snapshot(ctx.store)
    assert_problem(extend(api, grant["id"], scopes=["GET /**"]), 422, "extension-widens")
    assert_problem(extend(api, grant["id"], "bob"), 403, "not-grantee")
    assert_problem(extend(api, "grt_0000000000000000"), 404, "grant-not-found")
    for bad in ({"duration": True}, {"reason": ""}, {"scopes": []}, {"extra": 1}):
        assert_problem(extend(api, grant["id"], **bad), 422)
    assert_problem(api.post(f"/v1/grants/{grant['id']}/extend", "alice", json={}), 422)
    assert snapshot(ctx.store) == before


@pytest.mark.parametrize("ender", ["bob", "alice", "kill-switch"])
def test_ending_a_grant_ends_its_extension_too(
    api: Control, ctx: Context, clock: FrozenClock, ender: str
) -> None:
    grant = read_grant(api)
    clock.advance(timedelta(minutes=10))
    follow = extend(api, grant["id"]).json()["grant"]
    if ender == "kill-switch":
        killed = api.ok(
            "POST", "/v1/revocations", "admin", json={"principal": "alice", "reason": "incident"}
        )
        assert {g["id"] for g in killed["items"]} == {grant["id"], follow["id"]}
        assert killed["revoked"] == 2
    else:
        api.ok("POST", f"/v1/grants/{grant['id']}/revoke", ender, json={"reason": "incident"})
    status = "released" if ender == "alice" else "revoked"
    for g in (grant, follow):
        assert api.ok("GET", f"/v1/grants/{g['id']}", "bob")["status"] == status
    assert isinstance(ctx.feed, RecordingFeed)
    assert set(ctx.feed.ended) == {grant["id"], follow["id"]}, "both announced to gateways"
    events = api.ok("GET", f"/v1/audit?grant={follow['id']}&type=grant.*", "admin")["items"]
    [ended] = [e for e in events if e["type"] == f"grant.{status}"]
    if ender != "kill-switch":
        assert ended["data"]["ended_with"] == grant["id"]


# Review ------------------------------------------------------------------------------------


def break_glass(api: Control) -> dict[str, Any]:
    created = file(api, {**READ, "scopes": ["OPTIONS /v1/x"], "reason": "outage"}).json()
    assert created["status"] == "approved", created
    assert created["decision"]["break_glass"] is True
    grant: dict[str, Any] = created["grant"]
    assert grant["needs_review"] is True
    assert grant["reviewed_by"] is None
    return grant


def review(api: Control, grant_id: str, who: str, **body: Any) -> httpx.Response:
    return api.post(f"/v1/grants/{grant_id}/review", who, json=body)


def test_a_break_glass_grant_is_listed_until_someone_else_reviews_it(
    api: Control, ctx: Context
) -> None:
    grant = break_glass(api)
    plain = read_grant(api)
    flagged = api.ok("GET", "/v1/grants?needs_review=true", "bob")["items"]
    assert [g["id"] for g in flagged] == [grant["id"]]

    api.ok("POST", "/v1/principals", "admin", json={"id": "eve", "groups": ["engineering"]})
    api.tokens["eve"] = api.ok("POST", "/v1/principals/eve/tokens", "admin", json={})["token"]
    before = snapshot(ctx.store)
    assert_problem(review(api, grant["id"], "alice"), 403, "self-review")
    assert_problem(review(api, grant["id"], "eve"), 403, "not-allowed-to-review")
    assert_problem(review(api, plain["id"], "bob"), 409, "review-not-needed")
    assert_problem(review(api, grant["id"], "bob", verdict="ok"), 422)
    assert snapshot(ctx.store) == before

    done = review(api, grant["id"], "bob", comment="checked the incident").json()
    assert (done["needs_review"], done["reviewed_by"]) == (False, "bob")
    assert done["reviewed_at"] == "2026-01-05T10:00:00Z"
    assert_problem(review(api, grant["id"], "admin"), 409, "already-reviewed")
    assert api.ok("GET", "/v1/grants?needs_review=true", "bob")["items"] == []
    rest = api.ok("GET", "/v1/grants?needs_review=false", "bob")["items"]
    assert {g["id"] for g in rest} == {grant["id"], plain["id"]}
    [event] = api.ok("GET", "/v1/audit?type=grant.reviewed", "admin")["items"]
    assert (event["actor"], event["grant"]) == ("bob", grant["id"])
    assert event["data"] == {"comment": "checked the incident"}


def test_an_administrator_may_review_an_ended_grant(api: Control) -> None:
    grant = break_glass(api)
    api.ok("POST", f"/v1/grants/{grant['id']}/revoke", "alice")
    done = review(api, grant["id"], "admin").json()
    assert (done["status"], done["reviewed_by"]) == ("released", "admin")
    assert_problem(review(api, "grt_0000000000000000", "admin"), 404, "grant-not-found")


# OpenAPI -----------------------------------------------------------------------------------


def test_the_new_operations_are_documented(api: Control) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/v1/grants/{grant_id}/extend"]
    assert "post" in paths["/v1/grants/{grant_id}/review"]
    filing = paths["/v1/requests"]["post"]
    assert {"201", "200"} <= set(filing["responses"])
    headers = {p["name"] for p in filing["parameters"] if p["in"] == "header"}
    assert headers == {"Idempotency-Key"}
    listing = {p["name"] for p in paths["/v1/grants"]["get"]["parameters"]}
    assert "needs_review" in listing
