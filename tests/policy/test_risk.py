"""The risk table: each factor's points, their sum, and the clamp."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jitgate.domain.models import Api, Injection, InjectionKind, Principal, PrincipalKind
from jitgate.domain.scopes import parse_scopes
from jitgate.policy.risk import RiskWeights, assess

ALICE = Principal("alice", PrincipalKind.USER, "Alice", frozenset({"engineering"}))
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
NOON = datetime(2026, 1, 5, 12, tzinfo=UTC)  # a Monday, within business hours


def _api(environment: str) -> Api:
    return Api("payments", "https://pay.example", Injection(InjectionKind.HEADER), environment)


CASES = [
    # (id, scopes, environment, duration, factors)
    ("narrow read", ["GET /v1/charges/*"], "staging", 15 * MINUTE, ()),
    ("write", ["POST /v1/charges"], "staging", 15 * MINUTE, (("writes", 30),)),
    ("prod", ["GET /v1/charges/*"], "prod", 15 * MINUTE, (("prod", 25),)),
    ("open path is broad", ["GET /v1/**"], "staging", 15 * MINUTE, (("broad_scope", 15),)),
    (
        "all methods are broad and write",
        ["* /v1/x"],
        "staging",
        15 * MINUTE,
        (("writes", 30), ("broad_scope", 15)),
    ),
    ("exactly 1h is not long", ["GET /v1/x"], "staging", HOUR, ()),
    ("over 1h", ["GET /v1/x"], "staging", HOUR + MINUTE, (("long_duration", 10),)),
    ("exactly 8h", ["GET /v1/x"], "staging", 8 * HOUR, (("long_duration", 10),)),
    ("over 8h", ["GET /v1/x"], "staging", 8 * HOUR + MINUTE, (("long_duration", 20),)),
    ("any scope counts", ["GET /v1/x", "DELETE /v1/y"], "staging", MINUTE, (("writes", 30),)),
    (
        "everything",
        ["* /**"],
        "prod",
        9 * HOUR,
        (("writes", 30), ("prod", 25), ("broad_scope", 15), ("long_duration", 20)),
    ),
]


@pytest.mark.parametrize(
    ("scopes", "environment", "duration", "factors"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_factor_table(
    scopes: list[str], environment: str, duration: timedelta, factors: tuple[tuple[str, int], ...]
) -> None:
    risk = assess(ALICE, _api(environment), parse_scopes(scopes), duration, local_time=NOON)
    assert risk.factors == factors
    assert risk.score == sum(points for _, points in factors)


def test_score_is_clamped_to_100() -> None:
    heavy = RiskWeights(writes=80, prod=80)
    risk = assess(
        ALICE, _api("prod"), parse_scopes(["POST /x"]), MINUTE, local_time=NOON, weights=heavy
    )
    assert risk.score == 100
    assert risk.factors == (("writes", 80), ("prod", 80))


def test_weights_are_configurable() -> None:
    weights = RiskWeights(prod=40, prod_environments=frozenset({"prod", "production"}))
    risk = assess(
        ALICE,
        _api("production"),
        parse_scopes(["GET /x"]),
        MINUTE,
        local_time=NOON,
        weights=weights,
    )
    assert risk.as_dict() == {"score": 40, "factors": [{"name": "prod", "points": 40}]}
