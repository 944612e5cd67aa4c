"""The approval workflow over HTTP: statuses, 404 for unknown ids, 403 and 409 rules."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jitgate.clock import FrozenClock
from jitgate.services.context import Context
from tests.control.conftest import Control, assert_problem, snapshot


def test_a_read_request_is_approved_at_once_with_its_decision(control: Control) -> None:
    response = control.post(
        "/v1/requests",
        "alice",
        json={"api": "demo", "scopes": ["GET /v1/**"], "duration": "10m", "reason": "debug 42"},
    )
    assert response.status_code == 201
    created = response.json()
    assert response.headers["location"] == f"/v1/requests/{created['id']}"
    assert created["status"] == "approved"
    assert created["decision"]["rule"] == "demo-read-self-service"
    assert created["decision"]["approvals_required"] == 0
    assert isinstance(created["decision"]["risk"]["score"], int)
    assert created["decision"]["reasons"]
    grant = created["grant"]
    assert grant["id"] == created["grant_id"]
    assert grant["status"] == "active"
    assert grant["scopes"] == ["GET /v1/**"]
    assert grant["expires_at"] == "2026-01-05T10:10:00Z"


def test_a_request_the_policy_does_not_cover_is_denied_with_reasons(control: Control) -> None:
    created = control.request(scope="OPTIONS /v1/x")
    assert created["status"] == "denied"
    assert created["grant"] is None
    assert created["decision"]["reasons"]
    too_long = control.request(duration="16m")
    assert too_long["status"] == "denied"
    assert any("15m" in r for r in too_long["decision"]["reasons"]), too_long["decision"]


def test_a_write_needs_an_approver_and_then_becomes_a_grant(control: Control) -> None:
    created = control.pending_write()
    assert created["decision"]["approvals_required"] == 1
    assert created["decision"]["approver_groups"] == ["approvers"]
    assert created["grant"] is None
    approved = control.ok("POST", f"/v1/requests/{created['id']}/approve", "bob", json={})
    assert approved["status"] == "approved"
    assert approved["approvals"][0]["approver"] == "bob"
    assert approved["grant"]["principal"] == "alice"
    token = control.ok("POST", f"/v1/grants/{approved['grant_id']}/token", "alice")
    assert token["token_type"] == "Bearer"
    assert token["gateway_url"] == "http://gateway.test/demo"
    assert token["token"].count(".") == 2


@pytest.mark.parametrize("verb", ["approve", "deny"])
def test_the_requester_cannot_decide_their_own_request(control: Control, verb: str) -> None:
    created = control.pending_write()
    response = control.post(f"/v1/requests/{created['id']}/{verb}", "alice", json={})
    assert_problem(response, 403, "self-approval")
    assert control.ok("GET", f"/v1/requests/{created['id']}", "alice")["status"] == "pending"


def test_someone_outside_the_approver_groups_cannot_approve(control: Control) -> None:
    created = control.pending_write()
    assert_problem(control.post(f"/v1/requests/{created['id']}/approve", "admin"), 403)
    assert control.ok("GET", f"/v1/requests/{created['id']}", "bob")["status"] == "pending"


@pytest.mark.parametrize(
    ("first", "first_by", "then", "then_by"),
    [
        ("approve", "bob", "approve", "carol"),
        ("approve", "bob", "deny", "carol"),
        ("deny", "bob", "approve", "carol"),
        ("deny", "bob", "deny", "carol"),
        ("cancel", "alice", "approve", "bob"),
        ("cancel", "alice", "cancel", "alice"),
        ("approve", "bob", "cancel", "alice"),
    ],
)
def test_a_decided_request_stays_decided(
    control: Control, ctx: Context, first: str, first_by: str, then: str, then_by: str
) -> None:
    created = control.pending_write()
    control.ok("POST", f"/v1/requests/{created['id']}/{first}", first_by, json={})
    before = snapshot(ctx.store)
    response = control.post(f"/v1/requests/{created['id']}/{then}", then_by, json={})
    assert_problem(response, 409, "request-decided")
    assert snapshot(ctx.store) == before


def test_an_expired_pending_request_cannot_be_approved(
    control: Control, clock: FrozenClock
) -> None:
    created = control.pending_write()
    clock.advance(timedelta(hours=24))
    response = control.post(f"/v1/requests/{created['id']}/approve", "bob", json={})
    assert_problem(response, 409)


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/v1/requests/req_0000000000000000", "request-not-found"),
        ("POST", "/v1/requests/req_0000000000000000/approve", "request-not-found"),
        ("POST", "/v1/requests/req_0000000000000000/deny", "request-not-found"),
        ("POST", "/v1/requests/req_0000000000000000/cancel", "request-not-found"),
        ("GET", "/v1/grants/grt_0000000000000000", "grant-not-found"),
        ("POST", "/v1/grants/grt_0000000000000000/token", "grant-not-found"),
        ("POST", "/v1/grants/grt_0000000000000000/revoke", "grant-not-found"),
        ("GET", "/v1/apis/nope", "api-not-found"),
        ("GET", "/v1/principals/nobody", "principal-not-found"),
    ],
)
def test_unknown_ids_are_404(control: Control, method: str, path: str, code: str) -> None:
    body = {"reason": "x"} if path.endswith("/revoke") else None
    assert_problem(control.call(method, path, "admin", json=body), 404, code)


def test_only_the_grantee_gets_a_token(control: Control) -> None:
    grant = control.grant()
    for other in ("bob", "admin"):
        assert_problem(control.post(f"/v1/grants/{grant['id']}/token", other), 403, "not-grantee")


def test_releasing_and_revoking_end_a_grant_once(control: Control) -> None:
    released = control.ok("POST", f"/v1/grants/{control.grant()['id']}/revoke", "alice")
    assert released["status"] == "released"
    assert released["active"] is False
    revoked = control.ok(
        "POST", f"/v1/grants/{control.grant()['id']}/revoke", "bob", json={"reason": "incident 7"}
    )
    assert revoked["status"] == "revoked"
    assert revoked["ended_by"] == "bob"
    assert revoked["end_reason"] == "incident 7"
    again = control.post(f"/v1/grants/{revoked['id']}/revoke", "admin", json={"reason": "again"})
    assert_problem(again, 409, "grant-ended")
    assert_problem(control.post(f"/v1/grants/{revoked['id']}/token", "alice"), 409, "grant-ended")


def test_revoking_someone_elses_grant_needs_a_reason_and_a_right(control: Control) -> None:
    grant = control.grant()
    assert_problem(control.post(f"/v1/grants/{grant['id']}/revoke", "bob", json={}), 422)
    control.ok("POST", "/v1/principals", "admin", json={"id": "eve", "groups": ["engineering"]})
    eve = control.ok("POST", "/v1/principals/eve/tokens", "admin", json={})["token"]
    response = control.post(
        f"/v1/grants/{grant['id']}/revoke",
        json={"reason": "mine now"},
        headers={"Authorization": f"Bearer {eve}"},
    )
    assert_problem(response, 403, "not-allowed-to-revoke")
    assert control.ok("GET", f"/v1/grants/{grant['id']}", "alice")["status"] == "active"


def test_the_kill_switch_revokes_every_active_grant_of_a_principal(control: Control) -> None:
    grants = {control.grant()["id"] for _ in range(3)}
    result = control.ok(
        "POST", "/v1/revocations", "admin", json={"principal": "alice", "reason": "incident"}
    )
    assert result["revoked"] == 3
    assert {g["id"] for g in result["items"]} == grants
    assert control.ok("GET", "/v1/grants?active=true", "admin")["items"] == []
    again = control.ok(
        "POST", "/v1/revocations", "admin", json={"principal": "alice", "reason": "incident"}
    )
    assert again["revoked"] == 0


def test_an_api_owner_may_use_the_kill_switch_on_their_api(control: Control) -> None:
    control.grant()
    result = control.ok("POST", "/v1/revocations", "bob", json={"api": "demo", "reason": "leak"})
    assert result["revoked"] == 1
    assert_problem(
        control.post("/v1/revocations", "bob", json={"principal": "alice", "reason": "x"}), 403
    )


def test_listing_filters(control: Control, clock: FrozenClock) -> None:
    control.grant()
    pending = control.pending_write()
    listed = control.ok("GET", "/v1/requests?status=pending", "bob")["items"]
    assert [r["id"] for r in listed] == [pending["id"]]
    assert control.ok("GET", "/v1/requests?requester=bob", "bob")["items"] == []
    assert len(control.ok("GET", "/v1/grants?active=true&principal=alice", "bob")["items"]) == 1
    clock.advance(timedelta(minutes=11))
    assert control.ok("GET", "/v1/grants?active=true", "bob")["items"] == []
    [old] = control.ok("GET", "/v1/grants", "bob")["items"]
    assert old["status"] == "expired"
    assert old["active"] is False
