"""Upstream secrets never leave: no control-plane answer, audit event or row holds one."""

from __future__ import annotations

import json

from jitgate.services.context import Context
from tests.control.conftest import Control, snapshot

SECRET = "sk_live_K3y-that-must-n3ver-leak_0123456789"
ROTATED = "sk_live_R0tated-secret-also-never-leaks_9876"


def test_no_answer_ever_contains_an_upstream_secret(control: Control, ctx: Context) -> None:
    added = control.ok(
        "POST",
        "/v1/apis",
        "admin",
        json={
            "name": "payments",
            "base_url": "https://payments.example.com/api",
            "secret": SECRET,
            "injection": {"kind": "header", "name": "X-Api-Key", "template": "{secret}"},
            "owners": ["approvers"],
        },
    )
    assert added["name"] == "payments"
    assert "secret" not in added
    control.ok("POST", "/v1/apis/payments/secret", "admin", json={"secret": ROTATED})
    control.ok("GET", "/v1/apis", "alice")
    control.ok("GET", "/v1/apis/payments", "alice")
    control.ok("GET", "/v1/apis/demo", "alice")
    control.request(api="payments")  # no rule covers it: denied, with reasons
    grant = control.grant()
    control.ok("POST", f"/v1/grants/{grant['id']}/token", "alice")
    control.ok("GET", "/v1/grants", "bob")
    pending = control.pending_write()
    control.ok("POST", f"/v1/requests/{pending['id']}/approve", "bob", json={"comment": "ok"})
    control.ok("GET", "/v1/requests", "bob")
    control.ok("POST", f"/v1/grants/{grant['id']}/revoke", "bob", json={"reason": "done"})
    control.ok("GET", "/v1/policy", "alice")
    control.ok("POST", "/v1/audit/checkpoints", "admin")
    control.ok("GET", "/v1/audit?limit=1000", "admin")
    control.ok("GET", "/v1/audit/verify", "admin")
    control.get("/openapi.json")
    control.get("/.well-known/jwks.json")
    control.get("/metrics")
    control.post("/v1/apis", "admin", json={"name": "x", "base_url": "ftp://h", "secret": SECRET})
    control.post("/v1/apis/demo/secret", "alice", json={"secret": SECRET})
    control.post("/v1/apis/nope/secret", "admin", json={"secret": SECRET + "\n"})

    assert len(control.responses) >= 20
    for response in control.responses:
        seen = response.text + json.dumps(dict(response.headers))
        for secret in (SECRET, ROTATED, control.demo_secret):
            assert secret not in seen, (response.request.method, response.request.url)
    stored = repr(snapshot(ctx.store))
    for secret in (SECRET, ROTATED, control.demo_secret):
        assert secret not in stored, "secrets are stored encrypted"
    submitted = repr([e.data for e in ctx.audit.events])  # type: ignore[attr-defined]
    assert SECRET not in submitted
