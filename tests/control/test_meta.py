"""What every deployment relies on: OpenAPI, JWKS, health, readiness and metrics."""

from __future__ import annotations

import base64
import re

import jwt
import pytest
from sqlalchemy import create_engine

from jitgate.services.context import Context
from jitgate.storage.store import Store
from tests.control.conftest import Control, assert_problem

SPEC_OPERATIONS = [
    "POST /v1/requests",
    "GET /v1/requests",
    "GET /v1/requests/{}",
    "POST /v1/requests/{}/approve",
    "POST /v1/requests/{}/deny",
    "POST /v1/requests/{}/cancel",
    "GET /v1/grants",
    "GET /v1/grants/{}",
    "POST /v1/grants/{}/token",
    "POST /v1/grants/{}/revoke",
    "POST /v1/revocations",
    pytest.param(
        "POST /v1/token/exchange",
        marks=pytest.mark.xfail(strict=True, reason="RFC 8693 exchange is not implemented yet"),
    ),
    "GET /v1/audit",
    "GET /v1/audit/verify",
    "GET /v1/apis",
    "POST /v1/apis",
    "GET /v1/principals",
    "POST /v1/principals",
    "GET /v1/policy",
    "GET /.well-known/jwks.json",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
]


def operations(control: Control) -> set[str]:
    response = control.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    return {
        f"{method.upper()} {re.sub(r'{[^}]+}', '{}', path)}"
        for path, item in document["paths"].items()
        for method in item
    }


@pytest.mark.parametrize("operation", SPEC_OPERATIONS)
def test_openapi_lists_the_spec_operations(control: Control, operation: str) -> None:
    assert operation in operations(control)


def test_openapi_marks_secrets_write_only(control: Control) -> None:
    schemas = control.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["ApiIn"]["properties"]["secret"]["writeOnly"] is True
    assert schemas["SecretIn"]["properties"]["secret"]["writeOnly"] is True


def test_jwks_publishes_public_ed25519_keys_that_verify_grant_tokens(
    control: Control, ctx: Context
) -> None:
    response = control.get("/.well-known/jwks.json")
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert keys
    for key in keys:
        assert set(key) == {"kty", "crv", "use", "alg", "kid", "x"}, "never a private part"
        assert (key["kty"], key["crv"], key["alg"], key["use"]) == (
            "OKP",
            "Ed25519",
            "EdDSA",
            "sig",
        )
        assert len(base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))) == 32
    grant = control.grant()
    token = control.ok("POST", f"/v1/grants/{grant['id']}/token", "alice")["token"]
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["typ"]) == ("EdDSA", "jit+jwt")
    [jwk] = [k for k in keys if k["kid"] == header["kid"]]
    claims = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=["EdDSA"],
        audience="demo",
        issuer=ctx.issuer,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert claims["sub"] == "alice"
    assert claims["gid"] == grant["id"]
    assert claims["scope"] == ["GET /v1/**"]


def test_healthz(control: Control) -> None:
    response = control.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_the_policy_digest(control: Control, ctx: Context) -> None:
    response = control.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "policy": ctx.policy.digest}


def test_readyz_is_a_503_problem_when_the_database_is_unreachable(
    control: Control, ctx: Context
) -> None:
    ctx.store = Store(create_engine("sqlite:////nonexistent-dir/for/jitgate.db"))
    assert_problem(control.get("/readyz"), 503, "not-ready")
    assert control.get("/healthz").status_code == 200, "liveness does not depend on the database"


def test_metrics_are_prometheus_text(control: Control) -> None:
    response = control.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert any(line.startswith("# HELP ") for line in lines)
    assert any(line.startswith("# TYPE ") for line in lines)
