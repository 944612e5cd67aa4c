"""The enforcement decision, shared by the proxy and the decision endpoints.

:func:`decide` takes the caller's method, raw request target and headers and answers
:class:`Allow` or :class:`Deny` with a reason code. It touches no database and no
network: token verification results are cached (successes only, keyed by the exact
token string, never past ``exp``, and only while the verifying key is in force), while
revocation, time, scope and usage limits are checked on every call. The scope check's
outcome for an exact (method, raw path) is remembered with the verified token
(:data:`ROUTES_PER_TOKEN` of them): it depends on nothing else. Any unexpected error in
here is a denial (fail closed).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from multidict import CIMultiDictProxy, MultiMapping

from jitgate.domain.masks import Mask, parse_masks
from jitgate.domain.scopes import ALL_METHODS, AmbiguousPath, Scope, normalise_path, parse_scope
from jitgate.errors import JitgateError
from jitgate.gateway.view import GatewayView, Upstream
from jitgate.tokens.grant_token import GrantClaims, check_time, verify_signature

METHOD_OVERRIDE_HEADERS = (
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
)
METHOD_OVERRIDE_PARAMS = ("_method",)


ROUTES_PER_TOKEN = 64  # (method, path) outcomes remembered per verified token


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    claims: GrantClaims
    scopes: tuple[Scope, ...]
    masks: tuple[Mask, ...] = ()  # the grant's response masks (``msk``), parsed once
    # The scope check's outcome by (method, raw path): the upstream path, or the refusal.
    # A pure function of the token's scopes and the request, so it may be remembered.
    routes: dict[tuple[str, str], str | Deny] = field(
        default_factory=dict, compare=False, repr=False
    )


@dataclass(frozen=True, slots=True)
class Allow:
    upstream: Upstream
    token: VerifiedToken
    path: str  # the raw upstream path, exactly as matched
    query: str  # the raw query string, without "?"


@dataclass(frozen=True, slots=True)
class Deny:
    status: int
    reason: str
    detail: str
    api: str | None = None
    token: VerifiedToken | None = None


def query_keys(query: str) -> set[str]:
    """The parameter names of a raw query string, each percent-decoded once."""
    return {unquote_plus(part.partition("=")[0]) for part in query.split("&")}


class TokenCache:
    """Verified tokens by exact string; bounded, least recently inserted evicted first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, VerifiedToken] = OrderedDict()

    def get(self, token: str) -> VerifiedToken | None:
        return self._items.get(token)

    def put(self, token: str, verified: VerifiedToken) -> None:
        self._items[token] = verified
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def drop(self, token: str) -> None:
        self._items.pop(token, None)

    def __len__(self) -> int:
        return len(self._items)


def bearer_token(headers: CIMultiDictProxy[str] | Mapping[str, str]) -> str | Deny:
    values = (
        headers.getall("authorization", [])
        if isinstance(headers, MultiMapping)  # any multidict: duplicates must be seen
        else ([headers["authorization"]] if "authorization" in headers else [])
    )
    if not values:
        return Deny(401, "token-missing", "send the grant token as 'Authorization: Bearer …'")
    if len(values) > 1:
        return Deny(401, "token-ambiguous", "send exactly one Authorization header")
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer" or not token or " " in token.strip():
        return Deny(401, "token-malformed", "the Authorization header must be 'Bearer <token>'")
    return token.strip()


class Enforcer:
    def __init__(self, view: GatewayView, *, issuer: str, leeway: float, cache_size: int) -> None:
        self.view = view
        self.issuer = issuer
        self.leeway = leeway
        self.cache = TokenCache(cache_size)

    def _verify(self, token: str) -> VerifiedToken | Deny:
        cached = self.cache.get(token)
        if cached is not None:
            # A cached token stands only while the key that verified it is in force.
            if cached.claims.kid in self.view.public_keys:
                return cached
            self.cache.drop(token)
        result = verify_signature(token, self.view.public_keys, self.issuer)
        if not isinstance(result, GrantClaims):
            return Deny(401, result.reason, result.detail)
        try:
            scopes = tuple(parse_scope(s) for s in result.scopes)
        except JitgateError:
            return Deny(401, "token-claims", "the token carries an invalid scope")
        try:
            masks = parse_masks(result.masks)
        except JitgateError:
            return Deny(401, "token-claims", "the token carries an invalid response mask")
        verified = VerifiedToken(result, scopes, masks)
        self.cache.put(token, verified)
        return verified

    def decide(
        self,
        method: str,
        target: str,
        headers: CIMultiDictProxy[str] | Mapping[str, str],
        now: float,
    ) -> Allow | Deny:
        try:
            return self._decide(method, target, headers, now)
        except Exception:  # fail closed, whatever went wrong
            return Deny(500, "internal-error", "the request could not be checked; denied")

    def _decide(
        self,
        method: str,
        target: str,
        headers: CIMultiDictProxy[str] | Mapping[str, str],
        now: float,
    ) -> Allow | Deny:
        if not target.startswith("/"):
            return Deny(400, "ambiguous-path", "only origin-form request targets are accepted")
        raw_path, _, query = target.partition("?")
        _, _, rest = raw_path.partition("/")
        api_name, slash, tail = rest.partition("/")
        path = slash + tail if slash else "/"
        upstream = self.view.upstreams.get(api_name)
        known = api_name if upstream is not None else None  # never audit arbitrary names
        if not self.view.fresh:
            return Deny(
                503,
                "revocation-view-stale",
                "the gateway cannot confirm revocations right now; denied",
                known,
            )
        if method not in ALL_METHODS:
            return Deny(
                405, "method-not-allowed", f"the method {method[:16]!r} is never proxied", known
            )
        if any(h in headers for h in METHOD_OVERRIDE_HEADERS) or (
            query and not query_keys(query).isdisjoint(METHOD_OVERRIDE_PARAMS)
        ):
            return Deny(
                400, "method-override", "method-override headers and parameters are refused", known
            )
        token = bearer_token(headers)
        if isinstance(token, Deny):
            return Deny(token.status, token.reason, token.detail, known)
        verified = self._verify(token)
        if isinstance(verified, Deny):
            return Deny(verified.status, verified.reason, verified.detail, known)
        claims = verified.claims
        # Only a valid token's holder learns whether an API exists.
        if claims.api != api_name:
            return Deny(403, "token-audience", "the token is for another API", known, verified)
        if upstream is None:
            return Deny(404, "unknown-api", f"no API is registered as {api_name!r}", None, verified)
        expired = check_time(claims, now, self.leeway)
        if expired is not None:
            return Deny(403, expired.reason, expired.detail, api_name, verified)
        if self.view.is_ended(claims.grant_id):
            return Deny(403, "grant-revoked", "the grant has been revoked", api_name, verified)
        route = verified.routes.get((method, path))
        if route is None:
            route = _route(method, path, api_name, verified)
            if len(verified.routes) < ROUTES_PER_TOKEN:
                verified.routes[method, path] = route
        if isinstance(route, Deny):
            return route
        refused = self.view.usage.admit(claims, now)  # last: a refused call uses no quota
        if refused is not None:
            return Deny(429, refused[0], refused[1], api_name, verified)
        return Allow(upstream=upstream, token=verified, path=route, query=query)


def _route(method: str, path: str, api_name: str, verified: VerifiedToken) -> str | Deny:
    """The upstream path of ``method path`` under the token's scopes, or why not."""
    try:
        normalised = normalise_path(path)
    except AmbiguousPath as exc:
        return Deny(400, "ambiguous-path", exc.detail, api_name, verified)
    if not any(scope.matches(method, normalised) for scope in verified.scopes):
        return Deny(
            403,
            "out-of-scope",
            f"{method} {path[:200]} is outside the grant's scopes",
            api_name,
            verified,
        )
    return normalised.raw
