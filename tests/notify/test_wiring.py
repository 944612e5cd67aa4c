"""The composition root turns notifications on only when configured, and wires them fully."""

from __future__ import annotations

from pathlib import Path

from jitgate.clock import FrozenClock
from jitgate.config import load_settings
from jitgate.wiring import build

HOOK = {"name": "ops", "url": "http://127.0.0.1:9/hook", "secret": "whsec_0123456789abcdef"}
SLACK = {"bot_token": "xoxb-1", "signing_secret": "s3cr3t-signing"}


def test_configured_notifications_are_routed_delivered_and_checked(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, notifications={"webhooks": [HOOK], "slack": SLACK})
    rt = build(settings, gateway=False, clock=FrozenClock())
    try:
        assert rt.notifier is not None
        assert rt.store.router is rt.notifier.router
        assert rt.ctx.slack_signing_secret is not None
        assert rt.ctx.slack_signing_secret.reveal() == "s3cr3t-signing"
        assert [name for _, _, name in rt.notifier.jobs()] == [
            "notify-deliver",
            "notify-expiry-warnings",
        ]
        assert all(period <= 15 for period, _, _ in rt.notifier.jobs())
    finally:
        rt.close()


def test_without_configuration_nothing_is_installed(tmp_path: Path) -> None:
    rt = build(load_settings(state_dir=tmp_path), gateway=False, clock=FrozenClock())
    try:
        assert rt.notifier is None
        assert rt.store.router is None
        assert rt.ctx.slack_signing_secret is None
    finally:
        rt.close()
