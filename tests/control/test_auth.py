"""Caller authentication: every /v1 endpoint needs a valid principal token.

The endpoints are read from the served OpenAPI document, so a new route cannot slip
in without this test covering it.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from jitgate.audit.events import EventType
from jitgate.clock import FrozenClock
from jitgate.services import directory
from jitgate.services.context import Context
from tests.control.conftest import Control, assert_problem, snapshot

PUBLIC = {"/.well-known/jwks.json", "/healthz", "/readyz", "/metrics"}


def endpoints(control: Control) -> list[tuple[str, str]]:
    paths = control.client.get("/openapi.json").json()["paths"]
    found = [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, operations in paths.items()
        for method in operations
    ]
    assert ("POST", "/v1/requests") in found
    assert ("GET", "/v1/audit") in found
    return found


BAD_CREDENTIALS = {
    "none": {},
    "unknown-token": {"Authorization": "Bearer jgp_" + "A" * 43},
    "not-a-principal-token": {"Authorization": "Bearer eyJhbGciOiJub25lIn0.e30."},
    "basic": {"Authorization": "Basic YWxpY2U6cGFzc3dvcmQ="},
    "empty-bearer": {"Authorization": "Bearer "},
    "too-long": {"Authorization": "Bearer jgp_" + "A" * 5000},
}


@pytest.mark.parametrize("credential", BAD_CREDENTIALS)
def test_every_v1_endpoint_refuses_a_missing_or_bad_credential(
    control: Control, ctx: Context, credential: str
) -> None:
    before = snapshot(ctx.store)
    checked = 0
    for method, path in endpoints(control):
        if path in PUBLIC:
            continue
        response = control.call(method, path, headers=BAD_CREDENTIALS[credential])
        body = assert_problem(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"].lower().startswith("bearer")
        assert "jgp_AAAA" not in body["detail"]
        checked += 1
    assert checked >= 20
    assert snapshot(ctx.store) == before


def test_the_bearer_scheme_is_case_insensitive_and_a_good_token_works(control: Control) -> None:
    token = control.tokens["alice"]
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = control.get("/v1/me", headers={"Authorization": f"{scheme} {token}"})
        assert response.status_code == 200
        assert response.json()["id"] == "alice"


def test_a_principal_token_of_bob_in_basic_form_is_refused(control: Control) -> None:
    """A valid token sent with another scheme is not a credential."""
    token = control.tokens["bob"]
    response = control.get("/v1/me", headers={"Authorization": f"Basic {token}"})
    assert_problem(response, 401)


def test_two_authorization_headers_are_refused(control: Control) -> None:
    headers = [
        ("Authorization", f"Bearer {control.tokens['alice']}"),
        ("Authorization", f"Bearer {control.tokens['admin']}"),
    ]
    response = control.client.get("/v1/me", headers=headers)
    assert_problem(response, 401)


def test_failed_authentication_is_audited_without_the_credential(
    control: Control, ctx: Context
) -> None:
    control.get("/v1/grants", headers={"Authorization": "Bearer jgp_wrong"})
    control.get("/v1/grants")
    failures = [e for e in ctx.audit.events if e.type is EventType.AUTH_FAILED]  # type: ignore[attr-defined]
    assert [e.data["credential"] for e in failures] == ["invalid", "none"]
    assert all(e.data["path"] == "/v1/grants" for e in failures)
    assert "jgp_wrong" not in repr([e.data for e in failures])


def test_an_expired_principal_token_is_refused(
    control: Control, ctx: Context, clock: FrozenClock
) -> None:
    token = directory.issue_principal_token(
        ctx, None, "carol", label="short", expires_at=clock.now() + timedelta(minutes=5)
    )
    ok = control.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert ok.json()["id"] == "carol"
    clock.advance(timedelta(minutes=5))
    assert_problem(control.get("/v1/me", headers={"Authorization": f"Bearer {token}"}), 401)


def test_public_endpoints_need_no_credential(control: Control) -> None:
    for path in sorted(PUBLIC):
        assert control.get(path).status_code == 200, path
