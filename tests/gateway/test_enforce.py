"""The enforcement decision on its own: header reading, the token cache, failing closed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from jitgate.gateway.enforce import (
    ROUTES_PER_TOKEN,
    Deny,
    TokenCache,
    VerifiedToken,
    bearer_token,
    query_keys,
)
from jitgate.services import grants
from jitgate.tokens.grant_token import GrantClaims
from tests.gateway.conftest import Harness

pytestmark = pytest.mark.anyio


def _verified(n: int) -> VerifiedToken:
    claims = GrantClaims("alice", "demo", f"grt_{n}", f"jti{n}", ("GET /**",), 0.0, 1.0)
    return VerifiedToken(claims, ())


def test_token_cache_is_bounded_and_evicts_the_oldest() -> None:
    cache = TokenCache(2)
    for n in range(3):
        cache.put(f"t{n}", _verified(n))
    assert len(cache) == 2
    assert cache.get("t0") is None
    assert cache.get("t2") == _verified(2)
    cache.drop("t2")
    cache.drop("never-there")
    assert len(cache) == 1


@pytest.mark.parametrize(
    "headers",
    [
        CIMultiDictProxy(
            CIMultiDict([("Authorization", "Bearer a"), ("authorization", "Bearer b")])
        ),
        CIMultiDict([("Authorization", "Bearer a"), ("AUTHORIZATION", "Bearer a")]),
    ],
)
def test_two_authorization_headers_are_ambiguous_in_any_multidict(
    headers: CIMultiDict[str],
) -> None:
    result = bearer_token(headers)
    assert isinstance(result, Deny)
    assert (result.status, result.reason) == (401, "token-ambiguous")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc ", "abc"),
        ("Bearer", "token-malformed"),
        ("Bearer a b", "token-malformed"),
        ("Token abc", "token-malformed"),
        ("Bearerabc", "token-malformed"),
    ],
)
def test_bearer_token_reading(value: str, expected: str) -> None:
    result = bearer_token(CIMultiDictProxy(CIMultiDict({"Authorization": value})))
    got = result.reason if isinstance(result, Deny) else result
    assert got == expected


def test_query_keys_are_decoded_once() -> None:
    assert query_keys("a=1&%5Fmethod=x&b&c%3D=2&d+e=3") == {"a", "_method", "b", "c=", "d e"}
    assert "_method" not in query_keys("%255Fmethod=x")  # decoded once only


async def test_an_unexpected_error_denies(gw: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    token = gw.issue().token

    def broken(grant_id: str) -> bool:
        raise RuntimeError("view corrupted")

    monkeypatch.setattr(gw.view, "is_ended", broken)
    reply = await gw.call("GET", "/demo/v1/items", token)
    gw.assert_denied(reply, 500, "internal-error", api=None)
    assert "view corrupted" not in reply.body.decode()


async def test_remembered_scope_outcomes_never_skip_revocation_or_time(gw: Harness) -> None:
    issued = gw.issue(["GET /v1/items"])

    async def refused(token: str, path: str, status: int, code: str) -> None:
        hits = len(gw.hits)
        reply = await gw.call("GET", path, token)
        gw.assert_denied(reply, status, code, api="demo", hits_before=hits)

    for _ in range(2):  # the second time, from the remembered outcomes
        assert (await gw.call("GET", "/demo/v1/items", issued.token)).status == 200
        await refused(issued.token, "/demo/v1/other", 403, "out-of-scope")
    grants.revoke(gw.ctx, gw.root, issued.grant.id, "test")
    await refused(issued.token, "/demo/v1/items", 403, "grant-revoked")
    later = gw.issue(["GET /v1/items"], duration="5m")
    assert (await gw.call("GET", "/demo/v1/items", later.token)).status == 200
    gw.clock.advance(timedelta(minutes=6))
    gw.view.resync()  # keep the view fresh: the refusal must be about time
    await refused(later.token, "/demo/v1/items", 403, "token-expired")


async def test_remembered_scope_outcomes_are_bounded_per_token(gw: Harness) -> None:
    token = gw.issue(["GET /v1/items/*"]).token
    for n in range(ROUTES_PER_TOKEN + 10):
        assert (await gw.call("GET", f"/demo/v1/items/{n}", token)).status == 200
    verified = gw.enforcer.cache.get(token)
    assert verified is not None
    assert len(verified.routes) == ROUTES_PER_TOKEN
