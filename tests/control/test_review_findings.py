"""Defects found reviewing issue 3 (policy engine and approval workflows), one test each.

Each test states the behaviour the issue, SPEC.md or the docs promise; the ones still
marked ``xfail(strict=True)`` describe a defect left for a larger change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from jitgate.config import load_settings
from jitgate.errors import ConfigError
from jitgate.notify.messages import APPROVE_ACTION
from jitgate.notify.signing import slack_signature
from jitgate.policy import parse_policy
from jitgate.secrets import Secret
from jitgate.services.context import Context
from tests.control.conftest import Control, assert_problem, snapshot
from tests.control.test_approval_surface import POLICY, WRITE

# Bad input is a 4xx, never a 500 (SPEC: HTTP interfaces) --------------------------------

DEEP_YAML = [
    "[" * 5000,  # flow sequences
    "a: " + "{a: " * 3000,  # flow mappings
    "- " * 3000 + "x",  # block sequences
]


@pytest.mark.parametrize("text", DEEP_YAML, ids=["flow-seq", "flow-map", "block-seq"])
def test_a_deeply_nested_candidate_policy_is_a_422_not_a_500(
    control: Control, ctx: Context, text: str
) -> None:
    """The YAML composer (and the key-path walker) recurse once per level: a small
    candidate nested a few thousand deep raised RecursionError, answered as a 500."""
    before = snapshot(ctx.store)
    response = control.post("/v1/policy/replay", "admin", json={"policy": text})
    assert_problem(response, 422, "policy-invalid")
    assert snapshot(ctx.store) == before


def test_reloading_a_deeply_nested_policy_file_is_refused_and_recorded(
    control: Control, ctx: Context, tmp_path: Path
) -> None:
    """The same file on disk: ``POST /v1/policy/reload`` was a 500, and the refusal was not
    audited as ``policy.rejected`` (nor could SIGHUP or the watcher report it)."""
    path = tmp_path / "policy.yaml"
    path.write_text(DEEP_YAML[0])
    ctx.policy_file = path
    in_force = ctx.policy.digest
    assert_problem(control.post("/v1/policy/reload", "admin"), 422, "policy-rejected")
    assert ctx.policy.digest == in_force
    rejected = control.ok("GET", "/v1/audit?type=policy.rejected", "admin")["items"]
    assert len(rejected) == 1


def _slack_post(control: Control, ctx: Context, payload: str) -> httpx.Response:
    secret = "review-signing-secret"
    ctx.slack_signing_secret = Secret(secret)
    body = urlencode({"payload": payload}).encode()
    stamp = str(int(ctx.clock.timestamp()))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": slack_signature(secret, stamp, body),
    }
    return control.post("/v1/slack/interactions", content=body, headers=headers)


@pytest.mark.parametrize("where", ["payload", "button-value"])
def test_a_deeply_nested_slack_payload_is_a_422_not_a_500(
    control: Control, ctx: Context, where: str
) -> None:
    """``json.loads`` raises RecursionError (not ValueError) on deep nesting; the
    interaction endpoint let it through as a 500 (a signed body, but still bad input)."""
    if where == "payload":
        payload = "[" * 20000  # 60 kB encoded: under the 64 KiB limit
    else:
        action = {"action_id": APPROVE_ACTION, "value": "[" * 1999}
        payload = json.dumps({"type": "block_actions", "user": {"id": "U1"}, "actions": [action]})
    assert_problem(_slack_post(control, ctx, payload), 422, "bad-slack-payload")


# Secure by default: a configuration that cannot authenticate Slack stops start-up ---------


@pytest.mark.parametrize("key", ["signing_secret", "bot_token"])
def test_an_empty_slack_secret_stops_start_up(tmp_path: Path, key: str) -> None:
    """With ``signing_secret: ""`` every Slack signature is an HMAC under the empty key,
    which anyone can compute: the interaction endpoint would accept forged approvals."""
    values = {"bot_token": "xoxb-1", "signing_secret": "s3cr3t-signing", key: ""}
    path = tmp_path / "jitgate.yaml"
    path.write_text("notifications:\n  slack: " + json.dumps(values) + "\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert f"notifications.slack.{key}" in refused.value.detail


# Approvals ------------------------------------------------------------------------------


def test_a_disabled_requesters_pending_request_cannot_be_approved(
    control: Control, ctx: Context
) -> None:
    """The engine refuses a disabled principal's request when it is filed; one disabled
    while its request waits was still granted by the next approval (the grant then sat
    ready for the day the principal is enabled again)."""
    pending = control.pending_write()
    control.ok("POST", "/v1/principals/alice/disable", "admin")
    before = snapshot(ctx.store)
    refused = control.post(f"/v1/requests/{pending['id']}/approve", "bob", json={})
    assert_problem(refused, 409, "requester-disabled")
    assert snapshot(ctx.store) == before
    assert control.ok("GET", f"/v1/requests/{pending['id']}", "bob")["grant"] is None
    # Denying it stays possible (and deciding it is still the approvers' call).
    denied = control.ok("POST", f"/v1/requests/{pending['id']}/deny", "bob", json={})
    assert denied["status"] == "denied"


def _approve(control: Control, request_id: str, who: str, **body: Any) -> Any:
    return control.ok("POST", f"/v1/requests/{request_id}/approve", who, json=body)


def test_repeating_the_requests_own_scopes_is_not_a_narrowing(
    control: Control, ctx: Context
) -> None:
    """``scopes`` equal to the request's (here repeated) changed nothing, yet counted as a
    narrowing: it voided the other approver's vote and put a duplicate scope on the grant."""
    ctx.replace_policy(parse_policy(POLICY, "approval-surface.yaml"))  # two approvals
    created = control.ok("POST", "/v1/requests", "alice", json=WRITE)
    assert created["status"] == "pending"
    _approve(control, created["id"], "carol", terms_hash=created["terms_hash"])
    scope = WRITE["scopes"][0]
    done = _approve(
        control, created["id"], "bob", terms_hash=created["terms_hash"], scopes=[scope, scope]
    )
    assert done["terms_hash"] == created["terms_hash"]
    assert done["approved_scopes"] is None
    assert done["status"] == "approved", "carol's approval still counts"
    assert done["grant"]["scopes"] == [scope]
