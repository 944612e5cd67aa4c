"""RFC 9457 problem bodies, the one error format of every HTTP interface.

``type`` is ``urn:jitgate:problem:<code>`` with the stable machine code of the error;
``detail`` is for people. A problem body never carries a secret.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

PROBLEM_TYPE_PREFIX = "urn:jitgate:problem:"
PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem(status: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return {
        "type": PROBLEM_TYPE_PREFIX + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
