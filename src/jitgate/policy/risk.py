"""Risk of a request: a score from 0 to 100 and the factors that make it up.

Guarantees: the result depends only on the arguments (no wall clock, no storage), the
score is the sum of the factors' points clamped to 0..100, and every factor that adds
points is listed by name, in the order of :data:`FACTORS`, so approvers see *why*.

The weights live in one small value, :class:`RiskWeights`, which the policy file's
``risk:`` section overrides. Context the function cannot know by itself — the local time
of the request and how many of the requester's requests were denied recently — is
passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from jitgate.domain.models import Api, Principal, Risk
from jitgate.domain.scopes import Scope

MAX_SCORE = 100


@dataclass(frozen=True, slots=True)
class RiskWeights:
    """Points per factor; the defaults are policy v1's table."""

    writes: int = 30
    prod: int = 25
    broad_scope: int = 15
    long_duration: int = 10
    very_long_duration: int = 20
    long_after: timedelta = timedelta(hours=1)
    very_long_after: timedelta = timedelta(hours=8)
    prod_environments: frozenset[str] = frozenset({"prod"})
    off_hours: int = 10
    business_days: frozenset[int] = frozenset(range(5))  # Monday = 0, as datetime.weekday()
    business_start: int = 8  # first business hour, local time
    business_end: int = 19  # first hour after business hours
    recent_denial: int = 10  # points per denied request within the window
    recent_denials_max: int = 30
    recent_denials_window: timedelta = timedelta(days=7)


DEFAULT_WEIGHTS = RiskWeights()


@dataclass(frozen=True, slots=True)
class _Facts:
    requester: Principal
    api: Api
    scopes: Sequence[Scope]
    duration: timedelta
    local_time: datetime
    recent_denials: int


def _writes(facts: _Facts, weights: RiskWeights) -> int:
    return weights.writes if any(scope.is_write for scope in facts.scopes) else 0


def _prod(facts: _Facts, weights: RiskWeights) -> int:
    return weights.prod if facts.api.environment in weights.prod_environments else 0


def _broad_scope(facts: _Facts, weights: RiskWeights) -> int:
    return weights.broad_scope if any(scope.is_broad for scope in facts.scopes) else 0


def _long_duration(facts: _Facts, weights: RiskWeights) -> int:
    if facts.duration > weights.very_long_after:
        return weights.very_long_duration
    return weights.long_duration if facts.duration > weights.long_after else 0


def _off_hours(facts: _Facts, weights: RiskWeights) -> int:
    at = facts.local_time
    in_hours = weights.business_start <= at.hour < weights.business_end
    return 0 if at.weekday() in weights.business_days and in_hours else weights.off_hours


def _recent_denials(facts: _Facts, weights: RiskWeights) -> int:
    return min(facts.recent_denials * weights.recent_denial, weights.recent_denials_max)


FACTORS: tuple[tuple[str, Callable[[_Facts, RiskWeights], int]], ...] = (
    ("writes", _writes),
    ("prod", _prod),
    ("broad_scope", _broad_scope),
    ("long_duration", _long_duration),
    ("off_hours", _off_hours),
    ("recent_denials", _recent_denials),
)


def assess(
    requester: Principal,
    api: Api,
    scopes: Sequence[Scope],
    duration: timedelta,
    *,
    local_time: datetime,
    recent_denials: int = 0,
    weights: RiskWeights = DEFAULT_WEIGHTS,
) -> Risk:
    """Score one request made at ``local_time`` (in the policy's time zone); factors that
    add no points are left out."""
    facts = _Facts(requester, api, scopes, duration, local_time, recent_denials)
    factors = tuple(
        (name, points) for name, factor in FACTORS if (points := factor(facts, weights)) != 0
    )
    score = sum(points for _, points in factors)
    return Risk(score=max(0, min(MAX_SCORE, score)), factors=factors)
