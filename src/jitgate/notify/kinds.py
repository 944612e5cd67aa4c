"""The notification types, and the patterns with which a webhook subscribes to them.

The type names are the audit event types they announce, plus ``grant.expiring`` (a
warning, not an audit event). Like audit event names they are fixed forever; the list is
append-only.
"""

from __future__ import annotations

NOTIFICATION_TYPES = (
    "request.decided",  # only when the request awaits approval
    "request.approved",
    "request.denied",
    "request.cancelled",
    "request.expired",
    "grant.issued",
    "grant.revoked",
    "grant.expiring",
)

GRANT_EXPIRING = "grant.expiring"


def matches(pattern: str, kind: str) -> bool:
    """Whether ``pattern`` (a type, ``subject.*`` or ``*``) covers the type ``kind``."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return kind.startswith(pattern[:-1])
    return pattern == kind


def is_pattern(pattern: str) -> bool:
    """Whether ``pattern`` covers at least one notification type (a typo covers none)."""
    return any(matches(pattern, kind) for kind in NOTIFICATION_TYPES)
