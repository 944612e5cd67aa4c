"""Bad and hostile input: always a 4xx problem, never a 500, and nothing written.

Each case is sent by a demo principal; the database is snapshotted before and after
(audit events included), and must be identical.
"""

from __future__ import annotations

from typing import Any

import pytest

from jitgate.services.context import Context
from tests.control.conftest import Control, assert_problem, snapshot

JSON = {"Content-Type": "application/json"}
REQUEST = {"api": "demo", "scopes": ["GET /v1/**"], "duration": "10m", "reason": "debug"}
API = {"name": "payments", "base_url": "https://api.example.com", "secret": "sk_test_123"}


def req(**changes: Any) -> dict[str, Any]:
    return {**REQUEST, **changes}


def api(**changes: Any) -> dict[str, Any]:
    return {**API, **changes}


def bad(
    case: str, who: str, target: str, status: int, code: str | None = None, **kwargs: Any
) -> Any:
    """One case: ``who`` sends ``target`` ("METHOD /path") with ``kwargs`` -> ``status``."""
    method, _, path = target.partition(" ")
    return pytest.param(who, method, path, kwargs, status, code, id=case)


def nested(depth: int) -> str:
    return '{"id": "deep", "attributes": {"a": ' + "[" * depth + "]" * depth + "}}"


NEW = "POST /v1/requests"
ADD_API = "POST /v1/apis"
ADD_PRINCIPAL = "POST /v1/principals"

CASES = [
    # --- malformed bodies
    bad("not-json", "alice", NEW, 422, content="{nope", headers=JSON),
    bad("empty-body", "alice", NEW, 422, content="", headers=JSON),
    bad("array-body", "alice", NEW, 422, json=[REQUEST]),
    bad("null-body", "alice", NEW, 422, json=None),
    bad("missing-fields", "alice", NEW, 422, json={"api": "demo"}),
    bad("binary-garbage", "alice", NEW, 422, content=b"\xff\xfe\x00{", headers=JSON),
    bad(
        "nesting-near-recursion-limit",
        "admin",
        ADD_PRINCIPAL,
        422,
        content=nested(500),
        headers=JSON,
    ),
    bad("deep-nesting", "admin", ADD_PRINCIPAL, 400, content=nested(100_000), headers=JSON),
    # --- wrong types and extra fields
    bad("scopes-string", "alice", NEW, 422, json=req(scopes="GET /v1/**")),
    bad("duration-list", "alice", NEW, 422, json=req(duration=[600])),
    bad("duration-bool", "alice", NEW, 422, json=req(duration=True)),
    bad("duration-float", "alice", NEW, 422, json=req(duration=1.5)),
    bad("reason-number", "alice", NEW, 422, json=req(reason=42)),
    bad("api-null", "alice", NEW, 422, json=req(api=None)),
    bad("extra-field", "alice", NEW, 422, json=req(approved=True)),
    bad("extra-status-field", "alice", NEW, 422, json=req(status="approved")),
    # --- values the database cannot hold or render back
    bad(
        "surrogate-attribute",
        "admin",
        ADD_PRINCIPAL,
        422,
        content='{"id": "sur", "attributes": {"a": "\\ud800"}}',
        headers=JSON,
    ),
    bad(
        "infinite-attribute",
        "admin",
        ADD_PRINCIPAL,
        422,
        content='{"id": "inf", "attributes": {"a": 1e400}}',
        headers=JSON,
    ),
    bad(
        "token-expiry-far-future",
        "admin",
        "POST /v1/principals/alice/tokens",
        422,
        json={"expires_at": "9999-12-31T23:00:00-05:00"},
    ),
    bad(
        "token-expiry-naive",
        "admin",
        "POST /v1/principals/alice/tokens",
        422,
        json={"expires_at": "2030-01-01T00:00:00"},
    ),
    bad("audit-since-naive", "admin", "GET /v1/audit?since=2026-01-01T00:00:00", 422),
    bad("audit-since-year-one", "admin", "GET /v1/audit?since=0001-01-01T00:00:00%2B05:00", 422),
    bad("audit-after-huge", "admin", "GET /v1/audit?after=99999999999999999999", 422),
    # --- sizes
    bad("huge-reason", "alice", NEW, 422, json=req(reason="x" * 100_000)),
    bad("huge-api", "alice", NEW, 422, json=req(api="a" * 100_000)),
    bad("huge-scope", "alice", NEW, 422, json=req(scopes=["GET /" + "a/" * 200_000])),
    bad("too-many-scopes", "alice", NEW, 422, json=req(scopes=[f"GET /{i}" for i in range(21)])),
    bad("no-scopes", "alice", NEW, 422, json=req(scopes=[])),
    bad("huge-ticket", "alice", NEW, 422, json=req(ticket="T" * 10_000)),
    # --- what a request asks for
    bad("unknown-api", "alice", NEW, 404, "api-not-found", json=req(api="nope")),
    bad("scope-no-slash", "alice", NEW, 422, json=req(scopes=["GET v1"])),
    bad("scope-bad-method", "alice", NEW, 422, json=req(scopes=["FETCH /v1"])),
    bad("scope-inner-globstar", "alice", NEW, 422, json=req(scopes=["GET /**/x"])),
    bad("scope-dotdot", "alice", NEW, 422, json=req(scopes=["GET /v1/../admin"])),
    bad("scope-empty", "alice", NEW, 422, json=req(scopes=[""])),
    bad("scope-nul", "alice", NEW, 422, json=req(scopes=["GET /v1/\x00"])),
    bad("duration-zero", "alice", NEW, 422, json=req(duration=0)),
    bad("duration-zero-text", "alice", NEW, 422, json=req(duration="0s")),
    bad("duration-negative", "alice", NEW, 422, json=req(duration=-60)),
    bad("duration-negative-text", "alice", NEW, 422, json=req(duration="-5m")),
    bad("duration-garbage", "alice", NEW, 422, json=req(duration="10 minutes")),
    bad("duration-huge", "alice", NEW, 422, json=req(duration=10**30)),
    bad("duration-huge-text", "alice", NEW, 422, json=req(duration="9" * 5000)),
    bad("duration-overflow", "alice", NEW, 422, json=req(duration="99999999999999999999s")),
    bad("duration-years", "alice", NEW, 422, json=req(duration="9999d")),
    bad("reason-blank", "alice", NEW, 422, "reason-required", json=req(reason="   ")),
    bad("reason-nul", "alice", NEW, 422, json=req(reason="a\x00b")),
    bad("api-nul", "alice", NEW, 422, json=req(api="de\x00mo")),
    bad("starts-naive", "alice", NEW, 422, json=req(starts_at="2026-01-05T11:00:00")),
    bad("starts-far", "alice", NEW, 422, json=req(starts_at="2030-01-01T00:00:00Z")),
    bad("starts-garbage", "alice", NEW, 422, json=req(starts_at="tomorrow")),
    bad("ticket-blank", "alice", NEW, 422, json=req(ticket=" ")),
    bad("comment-nul", "bob", "POST /v1/requests/req_x/deny", 422, json={"comment": "\x00"}),
    # --- ids and query parameters
    bad("status-unknown", "alice", "GET /v1/requests?status=bogus", 422),
    bad("limit-zero", "alice", "GET /v1/requests?limit=0", 422),
    bad("limit-huge", "alice", "GET /v1/grants?limit=100000000000000000000", 422),
    bad("active-garbage", "alice", "GET /v1/grants?active=perhaps", 422),
    bad("since-garbage", "admin", "GET /v1/audit?since=yesterday", 422),
    bad("after-negative", "admin", "GET /v1/audit?after=-1", 422),
    bad("filter-huge", "admin", "GET /v1/audit?actor=" + "a" * 10_000, 422),
    bad("id-nul", "alice", "GET /v1/requests/req_%00", 400),
    bad("grant-id-nul", "alice", "POST /v1/grants/grt_%00/token", 400),
    bad("api-name-nul", "alice", "GET /v1/apis/de%00mo", 400),
    bad("principal-nul", "alice", "GET /v1/principals/al%00ice", 400),
    bad("filter-nul", "alice", "GET /v1/requests?requester=al%00ice", 400),
    bad("audit-filter-nul", "admin", "GET /v1/audit?actor=%00", 400),
    # --- registering APIs
    bad("api-by-requester", "alice", ADD_API, 403, "not-admin", json=api()),
    bad("api-by-approver", "bob", ADD_API, 403, "not-admin", json=api()),
    bad("api-file-url", "admin", ADD_API, 422, json=api(base_url="file:///etc/passwd")),
    bad("api-userinfo", "admin", ADD_API, 422, json=api(base_url="http://u:pw@api.example.com")),
    bad("api-user-only", "admin", ADD_API, 422, json=api(base_url="http://u@api.example.com")),
    bad("api-ftp", "admin", ADD_API, 422, json=api(base_url="ftp://api.example.com")),
    bad("api-no-host", "admin", ADD_API, 422, json=api(base_url="http://")),
    bad("api-javascript", "admin", ADD_API, 422, json=api(base_url="javascript:alert(1)")),
    bad("api-query", "admin", ADD_API, 422, json=api(base_url="https://h.example/?k=v")),
    bad("api-crlf-url", "admin", ADD_API, 422, json=api(base_url="https://h.example/\r\nX: y")),
    bad("api-secret-newline", "admin", ADD_API, 422, json=api(secret="sk_1\nInjected: yes")),
    bad("api-secret-cr", "admin", ADD_API, 422, json=api(secret="sk_1\r")),
    bad("api-secret-empty", "admin", ADD_API, 422, json=api(secret="")),
    bad("api-secret-huge", "admin", ADD_API, 422, json=api(secret="s" * 5000)),
    bad("api-bad-name", "admin", ADD_API, 422, json=api(name="Pay Ments")),
    bad("api-path-name", "admin", ADD_API, 422, json=api(name="../etc")),
    bad("api-reserved-name", "admin", ADD_API, 422, json=api(name="healthz")),
    bad("principal-named-system", "admin", ADD_PRINCIPAL, 422, json={"id": "system"}),
    bad("principal-named-policy", "admin", ADD_PRINCIPAL, 422, json={"id": "policy"}),
    bad("api-duplicate", "admin", ADD_API, 409, "api-exists", json=api(name="demo")),
    bad("api-bad-kind", "admin", ADD_API, 422, json=api(injection={"kind": "cookie"})),
    bad("api-host-header", "admin", ADD_API, 422, json=api(injection={"name": "Host"})),
    bad("api-header-crlf", "admin", ADD_API, 422, json=api(injection={"name": "X-Key\r\nEvil"})),
    bad("api-no-placeholder", "admin", ADD_API, 422, json=api(injection={"template": "Bearer"})),
    bad(
        "api-two-placeholders",
        "admin",
        ADD_API,
        422,
        json=api(injection={"template": "{secret}{secret}"}),
    ),
    bad("api-bad-owner", "admin", ADD_API, 422, json=api(owners=["Bad Group"])),
    bad("api-bad-environment", "admin", ADD_API, 422, json=api(environment="PROD!")),
    bad(
        "rotate-by-requester",
        "alice",
        "POST /v1/apis/demo/secret",
        403,
        "not-admin",
        json={"secret": "sk_new"},
    ),
    bad("rotate-newline", "admin", "POST /v1/apis/demo/secret", 422, json={"secret": "a\nb"}),
    bad("rotate-unknown", "admin", "POST /v1/apis/nope/secret", 404, json={"secret": "sk_new"}),
    # --- principals
    bad(
        "principal-by-requester",
        "alice",
        ADD_PRINCIPAL,
        403,
        "not-admin",
        json={"id": "m", "is_admin": True},
    ),
    bad("principal-by-approver", "carol", ADD_PRINCIPAL, 403, "not-admin", json={"id": "m"}),
    bad("principal-bad-id", "admin", ADD_PRINCIPAL, 422, json={"id": "Mallory!"}),
    bad("principal-bad-kind", "admin", ADD_PRINCIPAL, 422, json={"id": "m", "kind": "robot"}),
    bad("principal-bad-group", "admin", ADD_PRINCIPAL, 422, json={"id": "m", "groups": ["a b"]}),
    bad(
        "principal-nul",
        "admin",
        ADD_PRINCIPAL,
        422,
        json={"id": "m", "attributes": {"k": ["\x00"]}},
    ),
    bad("principal-duplicate", "admin", ADD_PRINCIPAL, 409, json={"id": "alice"}),
    bad(
        "token-by-requester", "alice", "POST /v1/principals/alice/tokens", 403, "not-admin", json={}
    ),
    bad("token-for-unknown", "admin", "POST /v1/principals/nobody/tokens", 404, json={}),
    bad(
        "token-expired",
        "admin",
        "POST /v1/principals/alice/tokens",
        422,
        json={"expires_at": "2020-01-01T00:00:00Z"},
    ),
    # --- the kill switch and the audit log
    bad("kill-no-target", "admin", "POST /v1/revocations", 422, json={"reason": "x"}),
    bad(
        "kill-no-reason",
        "admin",
        "POST /v1/revocations",
        422,
        json={"principal": "alice", "reason": " "},
    ),
    bad(
        "kill-by-requester",
        "alice",
        "POST /v1/revocations",
        403,
        json={"principal": "alice", "reason": "x"},
    ),
    bad("audit-by-requester", "alice", "GET /v1/audit", 403, "not-auditor"),
    bad("verify-by-approver", "bob", "GET /v1/audit/verify", 403, "not-auditor"),
    bad("checkpoint-by-requester", "alice", "POST /v1/audit/checkpoints", 403),
    # --- routing
    bad("unknown-path", "alice", "GET /v1/nope", 404),
    bad("wrong-method", "alice", "DELETE /v1/requests", 405),
    bad("encoded-traversal", "alice", "GET /v1/requests/..%2f..%2fetc%2fpasswd", 404),
]


@pytest.mark.parametrize(("who", "method", "path", "kwargs", "status", "code"), CASES)
def test_bad_input_is_a_4xx_problem_and_writes_nothing(
    control: Control,
    ctx: Context,
    who: str,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    before = snapshot(ctx.store)
    response = control.call(method, path, who, **kwargs)
    assert response.status_code < 500, response.text
    assert_problem(response, status, code)
    assert snapshot(ctx.store) == before


def test_validation_problems_list_what_is_wrong(control: Control) -> None:
    response = control.post("/v1/requests", "alice", json=req(duration=[1], reason=42))
    body = assert_problem(response, 422, "invalid-input")
    fields = {tuple(e["loc"]) for e in body["errors"]}
    assert ("body", "reason") in fields
    assert any(loc[:2] == ("body", "duration") for loc in fields)
    assert "reason" in body["detail"]


def test_the_valid_versions_of_those_inputs_are_accepted(control: Control) -> None:
    """The cases above are refused on their merits, not because nothing ever works."""
    assert control.ok("POST", "/v1/requests", "alice", json=REQUEST)["status"] == "approved"
    assert control.ok("POST", "/v1/requests", "alice", json=req(duration=600))["status"] == (
        "approved"
    )
    assert control.ok("POST", "/v1/apis", "admin", json=api())["name"] == "payments"
    principal = {"id": "m", "attributes": {"team": "payments", "on_call": True, "tags": ["a"]}}
    assert control.ok("POST", "/v1/principals", "admin", json=principal)["id"] == "m"
    assert "m" in {p["id"] for p in control.ok("GET", "/v1/principals", "admin")["items"]}
