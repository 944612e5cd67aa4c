"""The validated policy as frozen values.

A :class:`Policy` only exists after :mod:`jitgate.policy.loader` has checked every key of
the file, so the engine never meets a half-valid rule: every rule has a unique name, at
least one requester, at least one API, at least one parsed scope, a positive
``max_duration`` (the file's default when the rule names none) and an approval mode.
``Policy.digest`` is the SHA-256 of the file's bytes; decisions and audit events carry it
as the policy version, so a decision can always be traced to the exact text that made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from jitgate.domain.models import Principal
from jitgate.domain.scopes import Scope

ANY_API = "*"


@dataclass(frozen=True, slots=True)
class Defaults:
    """Values a rule inherits when it does not set them."""

    max_duration: timedelta
    pending_ttl: timedelta


@dataclass(frozen=True, slots=True)
class Requesters:
    """Who may ask under a rule: any listed principal id, or any member of a listed group."""

    groups: frozenset[str] = frozenset()
    principals: frozenset[str] = frozenset()

    def admits(self, principal: Principal) -> bool:
        return principal.id in self.principals or not self.groups.isdisjoint(principal.groups)


@dataclass(frozen=True, slots=True)
class Approval:
    """How a covered request is decided.

    ``auto``: approved at once (``count`` is 0, ``from_groups`` empty).
    Otherwise: ``count`` (>= 1) distinct principals, each in one of ``from_groups``.
    """

    auto: bool
    count: int = 0
    from_groups: frozenset[str] = frozenset()


AUTO = Approval(auto=True)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of the policy; ``line`` is where it starts in the source file."""

    name: str
    description: str
    requesters: Requesters
    apis: frozenset[str]
    scopes: tuple[Scope, ...]
    max_duration: timedelta
    approval: Approval
    line: int

    def admits_api(self, api_name: str) -> bool:
        return ANY_API in self.apis or api_name in self.apis


@dataclass(frozen=True, slots=True)
class Policy:
    """A whole policy file: rules in the order they are read."""

    version: int
    defaults: Defaults
    rules: tuple[Rule, ...]
    source: str
    digest: str
