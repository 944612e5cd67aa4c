"""Least privilege: method and normalised path must lie in a scope; ambiguity is a 400.

Ambiguous targets go over a raw socket so that no client library normalises them first.
"""

from __future__ import annotations

import pytest

from tests.gateway.conftest import Harness

pytestmark = pytest.mark.anyio

OUT_OF_SCOPE = [
    # (scopes, method, target)
    (["GET /v1/items"], "GET", "/demo/v1/orders"),
    (["GET /v1/items"], "GET", "/demo/v1/items/"),  # a trailing slash is another path
    (["GET /v1/items"], "GET", "/demo/v1/Items"),  # case-sensitive
    (["GET /v1/items"], "POST", "/demo/v1/items"),
    (["GET /v1/items"], "DELETE", "/demo/v1/items"),
    (["GET /v1/items"], "OPTIONS", "/demo/v1/items"),
    (["HEAD /v1/items"], "GET", "/demo/v1/items"),  # HEAD does not bring GET
    (["POST /v1/items"], "HEAD", "/demo/v1/items"),
    (["GET /v1/items/*"], "GET", "/demo/v1/items/a/b"),  # "*" never crosses "/"
    (["GET /v1/items/*"], "GET", "/demo/v1/items/"),  # nor matches an empty segment
    (["GET /v1/items/*"], "GET", "/demo/v1/items"),
    (["GET /v1/{id}/notes"], "GET", "/demo/v1/a/b/notes"),
    (["GET /v1/**"], "GET", "/demo/v2/items"),
    (["GET /v1/**"], "GET", "/demo/v10"),
    (["GET /v1/projects/42"], "GET", "/demo/v1/projects/42;x"),
    (["GET /v1/items", "POST /v1/orders"], "POST", "/demo/v1/items"),  # scopes never combine
]


@pytest.mark.parametrize(("scopes", "method", "target"), OUT_OF_SCOPE)
async def test_out_of_scope_is_refused(
    gw: Harness, scopes: list[str], method: str, target: str
) -> None:
    issued = gw.issue(scopes)
    reply = await gw.raw_request(method, target, issued.token)
    event = gw.assert_denied(reply, 403, "out-of-scope")
    assert event.grant == issued.grant.id
    assert event.principal == "alice"
    assert event.data["method"] == method


IN_SCOPE = [
    (["GET /v1/items/*"], "GET", "/demo/v1/items/a"),
    (["GET /v1/items/*"], "HEAD", "/demo/v1/items/a"),  # a granted GET admits HEAD
    (["GET /v1/{id}/notes"], "GET", "/demo/v1/42/notes"),
    (["GET /v1/**"], "GET", "/demo/v1"),
    (["GET /v1/**"], "GET", "/demo/v1/"),
    (["GET /v1/**"], "GET", "/demo/v1/a/b/c"),
    (["GET /v1/items", "POST /v1/orders"], "POST", "/demo/v1/orders"),
    (["* /v1/**"], "DELETE", "/demo/v1/items/1"),
    (["* /v1/**"], "OPTIONS", "/demo/v1/items/1"),
    (["GET /v1/a;b"], "GET", "/demo/v1/a;b"),
]


@pytest.mark.parametrize(("scopes", "method", "target"), IN_SCOPE)
async def test_in_scope_is_forwarded(
    gw: Harness, scopes: list[str], method: str, target: str
) -> None:
    reply = await gw.raw_request(method, target, gw.issue(scopes).token)
    assert reply.status == 200, reply.body
    assert [(h.method, h.target) for h in gw.hits] == [(method, target.removeprefix("/demo"))]


AMBIGUOUS = [
    "/demo/v1/../admin",
    "/demo/v1/./items",
    "/demo/v1/items/..",
    "/demo/v1/%2e%2e/admin",
    "/demo/v1/%2E%2E/admin",
    "/demo/v1/.%2e/admin",
    "/demo/v1/%2e/items",
    "/demo/v1/..;/admin",
    "/demo/v1/%252e%252e/admin",  # decoded twice by some upstreams
    "/demo/v1/%ef%bc%8e%ef%bc%8e/admin",  # fullwidth dots, NFKC-folded to ".."
    "/demo/v1/items%2fsecret",
    "/demo/v1/items%2Fsecret",
    "/demo/v1/items%5csecret",
    "/demo/v1/items\\secret",
    "/demo/v1//items",
    "/demo//v1/items",
    "/demo/v1/items%00",
    "/demo/v1/items%0a",
    "/demo/v1/items%zz",
    "/demo/v1/items%2",
    "/demo/v1/%c0%af",  # overlong "/"
    "/demo/v1/%ff",
]


@pytest.mark.parametrize("target", AMBIGUOUS)
async def test_ambiguous_path_is_a_400(gw: Harness, target: str) -> None:
    issued = gw.issue(["* /**"])  # even the broadest grant does not make it unambiguous
    reply = await gw.raw_request("GET", target, issued.token)
    gw.assert_denied(reply, 400, "ambiguous-path")
    assert issued.token not in reply.body.decode()


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "http://127.0.0.1/demo/v1/items"),  # absolute-form
        ("GET", "http://upstream.test/v1/items"),
        ("CONNECT", "127.0.0.1:80"),  # authority-form
        ("OPTIONS", "*"),  # asterisk-form
    ],
)
async def test_only_origin_form_targets_are_accepted(gw: Harness, method: str, target: str) -> None:
    reply = await gw.raw_request(method, target, gw.issue(["* /**"]).token)
    gw.assert_denied(reply, 400, "ambiguous-path", api=None)


@pytest.mark.parametrize("method", ["TRACE", "CONNECT"])
async def test_trace_and_connect_are_never_proxied(gw: Harness, method: str) -> None:
    reply = await gw.raw_request(method, "/demo/v1/items", gw.issue(["* /**"]).token)
    gw.assert_denied(reply, 405, "method-not-allowed")


@pytest.mark.parametrize("method", ["get", "FOO", "PROPFIND"])
async def test_unknown_methods_never_reach_upstream(gw: Harness, method: str) -> None:
    reply = await gw.raw_request(method, "/demo/v1/items", gw.issue(["* /**"]).token)
    assert reply.status in (400, 405)
    # refused by the parser (llhttp knows no such method), or by the gateway's checks
    assert reply.code in ("request-line-malformed", "method-not-allowed")
    assert gw.last_event.data["reason"] == reply.code
    assert gw.hits == []


@pytest.mark.parametrize(
    ("headers", "target"),
    [
        ([("X-HTTP-Method-Override", "DELETE")], "/demo/v1/items"),
        ([("X-HTTP-Method", "DELETE")], "/demo/v1/items"),
        ([("X-Method-Override", "DELETE")], "/demo/v1/items"),
        ([("x-http-method-override", "GET")], "/demo/v1/items"),
        ([], "/demo/v1/items?_method=DELETE"),
        ([], "/demo/v1/items?a=1&_method=DELETE"),
        ([], "/demo/v1/items?%5Fmethod=DELETE"),
        ([], "/demo/v1/items?_method"),
    ],
)
async def test_method_override_is_a_400(
    gw: Harness, headers: list[tuple[str, str]], target: str
) -> None:
    reply = await gw.raw_request("GET", target, gw.issue(["* /**"]).token, headers=headers)
    gw.assert_denied(reply, 400, "method-override")


async def test_query_string_is_not_part_of_the_scope(gw: Harness) -> None:
    issued = gw.issue(["GET /v1/items"])
    reply = await gw.raw_request("GET", "/demo/v1/items?path=/admin&x=..%2F", issued.token)
    assert reply.status == 200
    assert reply.json()["query"] == "path=/admin&x=..%2F"


@pytest.mark.parametrize("target", ["/nope/v1/items", "/DEMO/v1/items", "/demo%2fv1/items", "/"])
async def test_unknown_api_is_not_revealed_to_a_token_for_another_api(
    gw: Harness, target: str
) -> None:
    # Whether an API exists is only told to the holder of a valid token for it.
    reply = await gw.raw_request("GET", target, gw.issue(["* /**"]).token)
    assert (reply.status, reply.code) == (403, "token-audience")
    assert gw.hits == []
    assert gw.last_event.data["reason"] == "token-audience"
    assert gw.last_event.api is None  # arbitrary names are not written to the audit log


async def test_unknown_api_without_a_token_is_a_401_not_a_404(gw: Harness) -> None:
    reply = await gw.raw_request("GET", "/nope/v1/items", None)
    assert (reply.status, reply.code) == (401, "token-missing")
    assert gw.hits == []


@pytest.mark.parametrize(
    "raw",
    [
        # Content-Length and Transfer-Encoding together: a request-smuggling classic.
        "POST /demo/v1/items HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {t}\r\n"
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        "POST /demo/v1/items HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {t}\r\n"
        "Content-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nabcdef",
        "POST /demo/v1/items HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {t}\r\n"
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\nConnection: close\r\n\r\n"
        "0\r\n\r\n",
        "POST /demo/v1/items HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {t}\r\n"
        "Transfer-Encoding: xchunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        "GET /demo/v1/items HTTP/1.1\r\nHost: gw\r\nAuthorization : Bearer {t}\r\n"
        "Connection: close\r\n\r\n",
    ],
    ids=[
        "cl-and-te",
        "two-content-lengths",
        "two-transfer-encodings",
        "bad-te",
        "space-before-colon",
    ],
)
async def test_malformed_framing_never_reaches_upstream(gw: Harness, raw: str) -> None:
    token = gw.issue(["* /**"]).token
    reply = await gw.raw(raw.replace("{t}", token).encode())
    assert reply.status == 400
    assert gw.hits == []
