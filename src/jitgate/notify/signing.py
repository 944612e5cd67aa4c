"""Request signatures: ours on outgoing webhooks, Slack's on incoming interactions.

Outgoing (wire format, fixed; a new scheme gets a new ``vN`` key beside ``v1``)::

    X-Jitgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

``t`` is the time of the attempt (a retry is signed afresh), so a receiver refuses any
request whose ``t`` is more than :data:`REPLAY_WINDOW` seconds from its own clock, and
any delivery id (``X-Jitgate-Delivery``) it has already processed.

Incoming, Slack's v0 scheme: ``X-Slack-Signature: v0=<hex HMAC-SHA256(signing secret,
"v0:<X-Slack-Request-Timestamp>:<body>")>``, refused outside a 5-minute window.

Every comparison is constant-time; time is passed in, never read here.
"""

from __future__ import annotations

import hashlib
import hmac

from jitgate.errors import Unauthenticated

SIGNATURE_HEADER = "X-Jitgate-Signature"
REPLAY_WINDOW = 300  # seconds, either side of the receiver's clock
SLACK_WINDOW = 300  # seconds: what Slack's documentation asks of receivers
_MAX_TIMESTAMP_DIGITS = 12


class BadSignature(Unauthenticated):
    """A request whose signature is missing, malformed, wrong or too old."""

    code = "bad-signature"


def _hex_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _timestamp(value: str | None, now: float, window: float, what: str) -> int:
    if not value or not value.isascii() or not value.isdigit():
        raise BadSignature(f"{what}: no valid timestamp")
    if len(value) > _MAX_TIMESTAMP_DIGITS:
        raise BadSignature(f"{what}: no valid timestamp")
    timestamp = int(value)
    if abs(now - timestamp) > window:
        raise BadSignature(
            f"{what}: the timestamp is more than {int(window)} seconds from now "
            "(a replayed or delayed request)",
            code="stale-signature",
        )
    return timestamp


def sign_webhook(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Jitgate-Signature`` value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={_hex_hmac(secret, f'{timestamp}.'.encode() + body)}"


def verify_webhook(
    secret: str, header: str | None, body: bytes, now: float, *, window: float = REPLAY_WINDOW
) -> None:
    """Raise :class:`BadSignature` unless ``header`` signs ``body`` within ``window`` of ``now``.

    Several ``v1`` entries are accepted (any one may match), so that a sender can sign
    with an old and a new secret while a rotation is under way.
    """
    fields: dict[str, list[str]] = {}
    for part in (header or "").split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    stamps = fields.get("t", [])
    timestamp = _timestamp(stamps[0] if len(stamps) == 1 else None, now, window, SIGNATURE_HEADER)
    expected = _hex_hmac(secret, f"{timestamp}.".encode() + body)
    if not any(hmac.compare_digest(expected.encode(), v.encode()) for v in fields.get("v1", [])):
        raise BadSignature(f"{SIGNATURE_HEADER}: the signature does not match")


def slack_signature(signing_secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` Slack sends for ``body`` at ``timestamp``."""
    return "v0=" + _hex_hmac(signing_secret, b"v0:" + timestamp.encode() + b":" + body)


def verify_slack(
    signing_secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
) -> None:
    """Raise :class:`BadSignature` unless Slack signed ``body`` within 5 minutes of ``now``."""
    _timestamp(timestamp, now, SLACK_WINDOW, "X-Slack-Request-Timestamp")
    assert timestamp is not None  # checked above
    expected = slack_signature(signing_secret, timestamp, body)
    if not signature or not hmac.compare_digest(expected.encode(), signature.encode()):
        raise BadSignature("X-Slack-Signature: the signature does not match")
