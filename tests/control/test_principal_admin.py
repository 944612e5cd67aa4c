"""Incident tools for principals: revoke one leaked token, disable a principal."""

from __future__ import annotations

from .conftest import Control, assert_problem


def _token_ids(control: Control, who: str, principal: str) -> list[str]:
    items = control.ok("GET", f"/v1/principals/{principal}/tokens", who)["items"]
    assert all("hash" not in str(t) and "jgp_" not in str(t) for t in items)
    return [t["id"] for t in items if t["revoked_at"] is None]


def test_a_revoked_token_stops_working_at_once(control: Control) -> None:
    before = set(_token_ids(control, "admin", "alice"))
    spare = control.ok("POST", "/v1/principals/alice/tokens", "admin", json={"label": "ci"})
    control.tokens["alice-ci"] = spare["token"]
    assert control.ok("GET", "/v1/me", "alice-ci")["id"] == "alice"
    (leaked,) = set(_token_ids(control, "admin", "alice")) - before

    assert_problem(
        control.post(f"/v1/principals/alice/tokens/{leaked}/revoke", "bob"), 403, "not-admin"
    )
    control.ok("POST", f"/v1/principals/alice/tokens/{leaked}/revoke", "admin")
    assert_problem(control.get("/v1/me", "alice-ci"), 401)
    assert control.ok("GET", "/v1/me", "alice")["id"] == "alice"  # her other token still works
    assert_problem(
        control.post(f"/v1/principals/alice/tokens/{leaked}/revoke", "admin"),
        404,
        "token-not-found",
    )
    events = control.ok("GET", "/v1/audit", "admin", params={"type": "principal.token_revoked"})
    assert [e["data"]["token_id"] for e in events["items"]] == [leaked]


def test_a_principal_may_revoke_its_own_token(control: Control) -> None:
    (own,) = _token_ids(control, "alice", "alice")
    control.ok("POST", f"/v1/principals/alice/tokens/{own}/revoke", "alice")
    assert_problem(control.get("/v1/me", "alice"), 401)


def test_disabling_a_principal_locks_it_out_and_revokes_its_grants(control: Control) -> None:
    grant = control.grant("alice")
    assert_problem(control.post("/v1/principals/alice/disable", "bob"), 403, "not-admin")
    result = control.ok("POST", "/v1/principals/alice/disable", "admin")
    assert result["disabled"] is True
    assert result["revoked_grants"] == [grant["id"]]
    assert_problem(control.get("/v1/me", "alice"), 401)
    assert control.ok("GET", f"/v1/grants/{grant['id']}", "admin")["status"] == "revoked"
    control.ok("POST", "/v1/principals/alice/enable", "admin")
    assert control.ok("GET", "/v1/me", "alice")["id"] == "alice"
    assert control.ok("GET", f"/v1/grants/{grant['id']}", "admin")["status"] == "revoked"


def test_an_admin_cannot_disable_itself(control: Control) -> None:
    assert_problem(control.post("/v1/principals/admin/disable", "admin"), 422)
    assert control.ok("GET", "/v1/me", "admin")["id"] == "admin"
