"""Usage limits set by policy (``max_calls``, ``rate_limit``, ``idle_timeout``): carried by
the decision onto the grant, shown on it, and ``idle_timeout`` revoking unused grants."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jitgate.audit.events import EventType, NewEvent
from jitgate.clock import FrozenClock
from jitgate.domain.models import NO_LIMITS, GrantStatus, Limits
from jitgate.errors import ConfigError
from jitgate.policy import parse_policy
from jitgate.services import access, grants
from jitgate.services.context import Context
from jitgate.storage.audit_repo import AuditFilter
from tests.conftest import RecordingFeed

from .conftest import Demo

POLICY = """\
version: 1
rules:
  - name: limited-reads
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["GET /**"]
    max_duration: 1h
    approval: auto
    max_calls: 100
    rate_limit: 10/s
    idle_timeout: 10m
  - name: limited-writes
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["POST /**"]
    max_duration: 1h
    approval: {count: 1, from: {groups: [approvers]}}
    rate_limit: 600 / min
  - name: unlimited
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["DELETE /**"]
    approval: auto
"""

READS = Limits(100, 10, timedelta(seconds=1), timedelta(minutes=10))


@pytest.fixture
def limited(ctx: Context, demo: Demo) -> Context:
    ctx.replace_policy(parse_policy(POLICY, "limits.yaml"))
    return ctx


def _use(ctx: Context, grant_id: str) -> None:
    """Record an admitted call, as the gateway's audit writer does."""
    grant = grants.get_grant(ctx, grant_id)
    with ctx.store.transaction() as tx:
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.ACCESS_ALLOWED,
                    at=ctx.now(),
                    principal=grant.principal,
                    api=grant.api,
                    grant=grant.id,
                    data={"method": "GET", "path": "/x", "status": 200},
                )
            ]
        )


def test_the_rules_limits_reach_the_grant_and_its_event(limited: Context, demo: Demo) -> None:
    view = access.create_request(
        limited, demo.alice, api="demo", scopes=["GET /x"], duration="30m", reason="r"
    )
    assert view.grant is not None
    assert view.request.decision.limits == READS
    assert view.grant.limits == READS
    assert grants.get_grant(limited, view.grant.id).limits == READS  # stored and read back
    with limited.store.read() as tx:
        (issued,) = tx.audit.query(AuditFilter(type="grant.issued", grant=view.grant.id))
    assert issued.data["limits"] == {
        "max_calls": 100,
        "rate_limit": {"calls": 10, "per_seconds": 1},
        "idle_timeout_seconds": 600,
    }


def test_limits_survive_a_human_approval(limited: Context, demo: Demo) -> None:
    rid = access.create_request(
        limited, demo.alice, api="demo", scopes=["POST /x"], duration="30m", reason="w"
    ).request.id
    grant = access.approve(limited, demo.bob, rid).grant
    assert grant is not None
    assert grant.limits == Limits(rate_calls=600, rate_window=timedelta(minutes=1))


def test_a_rule_without_limits_gives_an_unlimited_grant(limited: Context, demo: Demo) -> None:
    view = access.create_request(
        limited, demo.alice, api="demo", scopes=["DELETE /x"], duration="5m", reason="d"
    )
    assert view.grant is not None
    assert view.grant.limits == NO_LIMITS
    assert grants.revoke_idle(limited) == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "limits.yaml:9: rules[0].max_calls: input should be greater than or equal to 1"),
        ("'ten'", "limits.yaml:9: rules[0].max_calls: input should be a valid integer"),
    ],
)
def test_bad_max_calls_are_load_errors(value: str, problem: str) -> None:
    text = POLICY.replace("max_calls: 100", f"max_calls: {value}")
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, "limits.yaml")
    assert caught.value.detail.startswith(problem), caught.value.detail


@pytest.mark.parametrize("value", ["10", "10/fortnight", "0/s", "-1/s", "1.5/s", "ten/s", "/s"])
def test_bad_rate_limits_are_load_errors(value: str) -> None:
    text = POLICY.replace("rate_limit: 10/s", f"rate_limit: {value!r}")
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, "limits.yaml")
    assert "limits.yaml:10: rules[0].rate_limit: expected a rate such as 10/s" in (
        caught.value.detail
    )


@pytest.mark.parametrize(
    ("value", "calls", "seconds"),
    [("10/s", 10, 1), ("600/m", 600, 60), ("5 / minute", 5, 60), ("1000/h", 1000, 3600)],
)
def test_rate_limit_spellings(value: str, calls: int, seconds: int) -> None:
    policy = parse_policy(POLICY.replace("rate_limit: 10/s", f"rate_limit: {value}"), "l.yaml")
    limits = policy.rules[0].limits
    assert (limits.rate_calls, limits.rate_window) == (calls, timedelta(seconds=seconds))


def test_an_unused_grant_is_revoked_after_its_idle_timeout(
    limited: Context, demo: Demo, clock: FrozenClock
) -> None:
    grant = access.create_request(
        limited, demo.alice, api="demo", scopes=["GET /x"], duration="1h", reason="r"
    ).grant
    assert grant is not None
    clock.advance(timedelta(minutes=10) - timedelta(microseconds=1))
    assert grants.revoke_idle(limited) == []
    clock.advance(timedelta(microseconds=1))
    (ended,) = grants.revoke_idle(limited)
    assert ended.id == grant.id
    assert ended.status is GrantStatus.REVOKED
    assert ended.ended_by == "system"
    assert ended.end_reason == "unused for 10m (idle_timeout)"
    feed = limited.feed
    assert isinstance(feed, RecordingFeed)
    assert grant.id in feed.ended  # the gateway is told at once
    with limited.store.read() as tx:
        (revoked,) = tx.audit.query(AuditFilter(type="grant.revoked", grant=grant.id))
    assert revoked.actor == "system"
    assert grants.revoke_idle(limited) == []  # once


def test_each_admitted_call_restarts_the_idle_clock(
    limited: Context, demo: Demo, clock: FrozenClock
) -> None:
    grant = access.create_request(
        limited, demo.alice, api="demo", scopes=["GET /x"], duration="1h", reason="r"
    ).grant
    assert grant is not None
    clock.advance(timedelta(minutes=9))
    _use(limited, grant.id)
    clock.advance(timedelta(minutes=9))
    assert grants.revoke_idle(limited) == []  # 9 minutes since the last call
    clock.advance(timedelta(minutes=1))
    assert [g.id for g in grants.revoke_idle(limited)] == [grant.id]


def test_a_scheduled_grant_is_not_idle_before_it_starts(
    limited: Context, demo: Demo, clock: FrozenClock
) -> None:
    grant = access.create_request(
        limited,
        demo.alice,
        api="demo",
        scopes=["GET /x"],
        duration="1h",
        reason="r",
        starts_at=clock.now() + timedelta(hours=2),
    ).grant
    assert grant is not None
    clock.advance(timedelta(hours=2, minutes=9))
    assert grants.revoke_idle(limited) == []  # 9 minutes into its life
    clock.advance(timedelta(minutes=1))
    assert [g.id for g in grants.revoke_idle(limited)] == [grant.id]
