"""What the upstream receives: no hop-by-hop headers, exactly one injected credential.

The echo upstream reports the headers and query it received with every known secret
replaced by a marker (``<echo>``, ``<echoq>``, ``<echob-basic>``), so these tests can
count credentials without the secret ever travelling back through the gateway.
"""

from __future__ import annotations

import pytest

from tests.gateway.conftest import Harness

pytestmark = pytest.mark.anyio


def _values(echo: dict[str, object], name: str) -> list[str]:
    headers = echo["headers"]
    assert isinstance(headers, list)
    return [value for key, value in headers if key.lower() == name.lower()]


def _names(echo: dict[str, object]) -> set[str]:
    headers = echo["headers"]
    assert isinstance(headers, list)
    return {key.lower() for key, _ in headers}


async def test_hop_by_hop_and_connection_named_headers_are_not_forwarded(gw: Harness) -> None:
    token = gw.issue(api="echo").token
    reply = await gw.raw_request(
        "GET",
        "/echo/v1/items",
        token,
        headers=[
            ("Connection", "keep-alive, X-Drop-Me, x-also-drop"),
            ("X-Drop-Me", "1"),
            ("X-Also-Drop", "2"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "h2c"),
            ("Proxy-Authorization", "Basic cHJveHk6cHc="),
            ("Proxy-Connection", "keep-alive"),
            ("X-Keep-Me", "yes"),
        ],
    )
    assert reply.status == 200, reply.body
    echo = reply.json()
    received = _names(echo)
    for name in (
        "connection",
        "x-drop-me",
        "x-also-drop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "authorization",
    ):
        assert name not in received, f"{name} was forwarded"
    assert _values(echo, "X-Keep-Me") == ["yes"]
    assert _values(echo, "X-Api-Key") == ["<echo>"]


async def test_callers_host_is_replaced_by_the_upstreams(gw: Harness) -> None:
    token = gw.issue(api="echo").token
    reply = await gw.call("GET", "/echo/v1/items", token, headers={"Host": "evil.test"})
    assert reply.status == 200
    (host,) = _values(reply.json(), "Host")
    assert host.startswith("127.0.0.1:")


@pytest.mark.parametrize("named", ["X-Api-Key", "x-api-key", "keep-alive, X-API-KEY"])
async def test_connection_cannot_remove_the_injected_credential(gw: Harness, named: str) -> None:
    token = gw.issue(api="echo").token
    reply = await gw.raw_request("GET", "/echo/v1/items", token, headers=[("Connection", named)])
    assert reply.status == 200
    assert _values(reply.json(), "X-Api-Key") == ["<echo>"]


async def test_connection_cannot_remove_the_injected_authorization(gw: Harness) -> None:
    token = gw.issue().token
    reply = await gw.raw_request(
        "GET", "/demo/v1/items", token, headers=[("Connection", "Authorization")]
    )
    assert reply.status == 200  # the demo upstream says 200 only with its secret


@pytest.mark.parametrize(
    "sent",
    [
        [("X-Api-Key", "attacker")],
        [("X-Api-Key", "attacker-1"), ("X-Api-Key", "attacker-2")],
        [("x-API-key", "attacker")],
        [("X-Api-Key", "")],
    ],
)
async def test_a_caller_supplied_credential_header_is_replaced(
    gw: Harness, sent: list[tuple[str, str]]
) -> None:
    token = gw.issue(api="echo").token
    reply = await gw.raw_request("GET", "/echo/v1/items", token, headers=sent)
    assert reply.status == 200
    assert _values(reply.json(), "X-Api-Key") == ["<echo>"]


async def test_the_grant_token_never_reaches_the_upstream(gw: Harness) -> None:
    token = gw.issue(api="echo").token
    reply = await gw.call("GET", "/echo/v1/items", token, headers={"X-Forwarded-For": "10.0.0.1"})
    assert reply.status == 200
    echo = reply.json()
    assert all(token not in value for _, value in echo["headers"])
    assert token not in echo["raw_query"]


@pytest.mark.parametrize(
    "query",
    [
        "api_key=evil&x=1",
        "x=1&api_key=evil&api_key=evil2",
        "x=1&api%5Fkey=evil",  # the same name, percent-encoded
        "x=1&api_key",
        "x=1&api_key=",
    ],
)
async def test_query_injection_replaces_a_caller_supplied_parameter(
    gw: Harness, query: str
) -> None:
    token = gw.issue(api="echoq").token
    reply = await gw.call("GET", f"/echoq/v1/items?{query}", token)
    assert reply.status == 200
    pairs = reply.json()["query"]
    assert [v for k, v in pairs if k == "api_key"] == ["<echoq>"]
    assert [v for k, v in pairs if k == "x"] == ["1"]
    assert "evil" not in reply.json()["raw_query"]


async def test_query_injection_without_a_query(gw: Harness) -> None:
    token = gw.issue(api="echoq").token
    reply = await gw.call("GET", "/echoq/v1/items", token)
    assert reply.status == 200
    assert reply.json()["query"] == [["api_key", "<echoq>"]]


async def test_query_injection_keeps_other_parameters_byte_for_byte(gw: Harness) -> None:
    token = gw.issue(api="echoq").token
    reply = await gw.call("GET", "/echoq/v1/items?b=%2F&a=1&a=2&c", token)
    assert reply.status == 200
    raw = reply.json()["raw_query"]
    kept, _, injected = raw.rpartition("&")
    assert kept == "b=%2F&a=1&a=2&c"
    assert injected == "api_key=<echoq>"  # the secret, percent-encoded, then masked


async def test_basic_injection_sets_exactly_one_authorization(gw: Harness) -> None:
    token = gw.issue(api="echob").token
    reply = await gw.call("GET", "/echob/v1/items", token, headers={"X-Other": "kept"})
    assert reply.status == 200
    echo = reply.json()
    assert _values(echo, "Authorization") == ["Basic <echob-basic>"]
    assert _values(echo, "X-Other") == ["kept"]
