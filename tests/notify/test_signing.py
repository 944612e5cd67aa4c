"""The two signature schemes, table-driven: what verifies, and every way not to."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from jitgate.notify.signing import (
    REPLAY_WINDOW,
    BadSignature,
    sign_webhook,
    slack_signature,
    verify_slack,
    verify_webhook,
)

SECRET = "whsec_0123456789abcdef"
BODY = b'{"type":"request.decided","id":"ntf_1"}'
NOW = 1_767_607_200  # 2026-01-05T10:00:00Z


def test_the_webhook_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    """The documented recipe, computed independently of the module."""
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign_webhook(SECRET, BODY, NOW) == f"t={NOW},v1={expected}"


GOOD = sign_webhook(SECRET, BODY, NOW)
OTHER = sign_webhook("whsec_other_secret_000", BODY, NOW)


@pytest.mark.parametrize(
    ("header", "body", "now"),
    [
        pytest.param(GOOD, BODY, NOW, id="fresh"),
        pytest.param(GOOD, BODY, NOW + REPLAY_WINDOW, id="at-the-window's-end"),
        pytest.param(GOOD, BODY, NOW - REPLAY_WINDOW, id="receiver-clock-behind"),
        pytest.param(f"{OTHER},v1={GOOD.split('v1=')[1]}", BODY, NOW, id="rotation-two-v1"),
        pytest.param(f" t={NOW} , v1={GOOD.split('v1=')[1]} ", BODY, NOW, id="spaces"),
    ],
)
def test_a_webhook_signature_verifies(header: str, body: bytes, now: int) -> None:
    verify_webhook(SECRET, header, body, now)


@pytest.mark.parametrize(
    ("header", "body", "now", "code"),
    [
        pytest.param(OTHER, BODY, NOW, "bad-signature", id="wrong-secret"),
        pytest.param(GOOD, BODY + b" ", NOW, "bad-signature", id="body-changed"),
        pytest.param(GOOD, BODY, NOW + REPLAY_WINDOW + 1, "stale-signature", id="replayed-late"),
        pytest.param(GOOD, BODY, NOW - REPLAY_WINDOW - 1, "stale-signature", id="from-the-future"),
        pytest.param(None, BODY, NOW, "bad-signature", id="missing"),
        pytest.param("", BODY, NOW, "bad-signature", id="empty"),
        pytest.param(GOOD.split(",")[1], BODY, NOW, "bad-signature", id="no-timestamp"),
        pytest.param(f"t={NOW},t={NOW}," + GOOD, BODY, NOW, "bad-signature", id="two-timestamps"),
        pytest.param(f"t=-{NOW},v1=00", BODY, NOW, "bad-signature", id="negative-timestamp"),
        pytest.param("t=\uff11\uff12,v1=00", BODY, NOW, "bad-signature", id="non-ascii-digits"),
        pytest.param(f"t={'9' * 40},v1=00", BODY, NOW, "bad-signature", id="huge-timestamp"),
        pytest.param(f"t={NOW}", BODY, NOW, "bad-signature", id="no-v1"),
        pytest.param(GOOD.replace("v1=", "v0="), BODY, NOW, "bad-signature", id="other-scheme"),
        pytest.param(
            sign_webhook(SECRET, BODY, NOW + 1).split(",")[1].join([f"t={NOW},", ""]),
            BODY,
            NOW,
            "bad-signature",
            id="signature-of-another-timestamp",
        ),
    ],
)
def test_a_webhook_signature_is_refused(
    header: str | None, body: bytes, now: int, code: str
) -> None:
    with pytest.raises(BadSignature) as refused:
        verify_webhook(SECRET, header, body, now)
    assert refused.value.code == code


SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
FORM = b"payload=%7B%22type%22%3A%22block_actions%22%7D"


def test_slack_signature_follows_slacks_v0_recipe() -> None:
    """Slack's documented example (api.slack.com/authentication/verifying-requests-from-slack)."""
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
        b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
        b"command=%2Fwebhook-collect&text=&"
        b"response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F"
        b"96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447"
        b"fce8b6703c"
    )
    assert (
        slack_signature(SLACK_SECRET, "1531420618", body)
        == "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    )


@pytest.mark.parametrize(
    ("timestamp", "signature", "body", "code"),
    [
        pytest.param(None, None, FORM, "bad-signature", id="no-headers"),
        pytest.param(str(NOW), None, FORM, "bad-signature", id="no-signature"),
        pytest.param(
            str(NOW), slack_signature("another", str(NOW), FORM), FORM, "bad-signature", id="wrong"
        ),
        pytest.param(
            str(NOW),
            slack_signature(SLACK_SECRET, str(NOW), FORM),
            FORM + b"x",
            "bad-signature",
            id="body-changed",
        ),
        pytest.param(
            str(NOW - 301),
            slack_signature(SLACK_SECRET, str(NOW - 301), FORM),
            FORM,
            "stale-signature",
            id="stale",
        ),
        pytest.param(
            str(NOW),
            slack_signature(SLACK_SECRET, str(NOW), FORM).removeprefix("v0="),
            FORM,
            "bad-signature",
            id="no-version",
        ),
        pytest.param("soon", "v0=00", FORM, "bad-signature", id="timestamp-not-a-number"),
    ],
)
def test_slack_requests_are_refused(
    timestamp: str | None, signature: str | None, body: bytes, code: str
) -> None:
    with pytest.raises(BadSignature) as refused:
        verify_slack(SLACK_SECRET, timestamp, signature, body, NOW)
    assert refused.value.code == code


def test_a_correctly_signed_slack_request_within_five_minutes_verifies() -> None:
    for at in (NOW - 300, NOW, NOW + 300):
        verify_slack(SLACK_SECRET, str(at), slack_signature(SLACK_SECRET, str(at), FORM), FORM, NOW)
