"""The one error root of jitgate.

Every error we raise on purpose carries a stable machine ``code`` (it becomes the
``type`` of an RFC 9457 problem at the HTTP edge) and a human ``detail``. The
subclasses say *what kind* of failure it is, which the edges map to a status code;
nothing in here knows about HTTP.
"""

from __future__ import annotations


class JitgateError(Exception):
    """Root of every deliberate jitgate error."""

    code: str = "error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.detail


class InvalidInput(JitgateError):  # noqa: N818 - reads as the problem it names
    """The input is malformed or violates a rule (bad scope, bad duration, ...)."""

    code = "invalid-input"


class NotFound(JitgateError):  # noqa: N818
    """The named object does not exist (or the caller may not know it exists)."""

    code = "not-found"


class Conflict(JitgateError):  # noqa: N818
    """The object is not in a state that allows the operation (decided request, ...)."""

    code = "conflict"


class Forbidden(JitgateError):  # noqa: N818
    """The caller is authenticated but not allowed to do this."""

    code = "forbidden"


class Unauthenticated(JitgateError):  # noqa: N818
    """No credential, or a credential that does not verify."""

    code = "unauthenticated"


class ConfigError(JitgateError):
    """The configuration or the policy file is unusable; start-up stops."""

    code = "config"
