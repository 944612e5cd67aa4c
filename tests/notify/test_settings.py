"""The ``notifications`` settings: what starts, what stops start-up with a clear message,
and that no secret ever shows in what the settings print."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from jitgate.config import load_settings
from jitgate.errors import ConfigError
from jitgate.notify.kinds import NOTIFICATION_TYPES, is_pattern, matches

GOOD = """\
notifications:
  webhooks:
    - {name: ops, url: "https://hooks.example.com/jitgate", secret: "whsec_0123456789abcdef",
       events: ["request.*", "grant.issued"]}
  slack: {bot_token: "xoxb-1", signing_secret: "s3cr3t-signing", default_channel: "#access"}
  max_attempts: 5
  backoff: 30s
  expiry_warning: 10m
"""


def test_a_full_notifications_section_loads(tmp_path: Path) -> None:
    path = tmp_path / "jitgate.yaml"
    path.write_text(GOOD)
    n = load_settings(path).notifications
    assert n.enabled
    assert [(w.name, w.events) for w in n.webhooks] == [("ops", ["request.*", "grant.issued"])]
    assert n.slack is not None
    assert n.slack.api_url == "https://slack.com/api"
    assert (n.max_attempts, n.backoff, n.expiry_warning) == (
        5,
        timedelta(seconds=30),
        timedelta(minutes=10),
    )
    shown = f"{n!r} {n} {n.model_dump()}"
    for secret in ("whsec_0123456789abcdef", "xoxb-1", "s3cr3t-signing"):
        assert secret not in shown


def test_notifications_are_off_by_default() -> None:
    assert not load_settings().notifications.enabled


BAD_HOOK = '{name: ops, url: "https://h.example.com", secret: "whsec_0123456789abcdef"'


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        (f"webhooks: [{BAD_HOOK}, events: [requests.*]}}]", "notifications.webhooks.0.events.0"),
        (f"webhooks: [{BAD_HOOK}, events: [request.decided.*]}}]", "not a notification type"),
        (f"webhooks: [{BAD_HOOK}}}, {BAD_HOOK}}}]", "webhook names must be unique"),
        ('webhooks: [{name: ops, url: "ftp://x", secret: "whsec_0123456789abcdef"}]', "http"),
        ('webhooks: [{name: ops, url: "https://x", secret: "short"}]', "secret"),
        (
            'webhooks: [{name: "Ops Team", url: "https://x", secret: "whsec_0123456789abcd"}]',
            "name",
        ),
        ("slack: {bot_token: x}", "notifications.slack.signing_secret"),
        ("max_attempts: 0", "notifications.max_attempts"),
        ("backoff: soon", "notifications.backoff"),
        ("pager: {}", "notifications.pager: unknown setting"),
    ],
)
def test_a_bad_notifications_section_stops_start_up(
    tmp_path: Path, section: str, needle: str
) -> None:
    path = tmp_path / "jitgate.yaml"
    path.write_text(f"notifications:\n  {section}\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert needle in refused.value.detail
    assert "whsec_0123456789abcdef" not in refused.value.detail


@pytest.mark.parametrize(
    ("pattern", "kind", "expected"),
    [
        ("*", "grant.expiring", True),
        ("request.*", "request.decided", True),
        ("request.*", "grant.issued", False),
        ("grant.issued", "grant.issued", True),
        ("grant.issued", "grant.issued.extra", False),
        ("grant.*", "grant.expiring", True),
    ],
)
def test_subscription_patterns(pattern: str, kind: str, expected: bool) -> None:
    assert matches(pattern, kind) is expected


def test_every_pattern_a_webhook_may_use_covers_a_type() -> None:
    assert all(is_pattern(t) for t in NOTIFICATION_TYPES)
    assert not any(is_pattern(p) for p in ("", "request", "request.", "req*", "audit.*"))
