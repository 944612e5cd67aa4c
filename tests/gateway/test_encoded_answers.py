"""Compressed answers: the gateway asks for ``identity``, decodes what comes compressed
anyway (gzip, deflate) before it scrubs the secret, and refuses what it cannot decode.

The upstream here ignores ``Accept-Encoding`` on purpose and echoes the credential it
received inside the compressed body, so a body passed through undecoded would leak it
(``gw.call`` fails on any spelling of a secret in a reply).
"""

from __future__ import annotations

import gzip
import zlib

import aiohttp
import pytest
from aiohttp import web

from jitgate.audit.events import EventType
from jitgate.domain.models import Api, Injection, InjectionKind
from jitgate.gateway.bodies import DECODED_STEP, Decoder, decoder_for
from jitgate.secrets import Secret
from jitgate.services import directory
from tests.gateway.conftest import Harness, serve

pytestmark = pytest.mark.anyio

KEY = "sk_live_encoded_0123456789abcdef"
BOMB_SIZE = 32 << 20  # 32 MiB of zeros, 32 KiB compressed


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


def _gzip_members(data: bytes) -> bytes:
    half = len(data) // 2
    return gzip.compress(data[:half]) + gzip.compress(data[half:])


def _body(seen: str) -> bytes:
    return (b"pad " * 5000) + f"the key I got: {seen}; bye".encode() + (b" pad" * 5000)


class EncodingUpstream:
    """``/{coding}``: the echo compressed with that coding, whatever was asked for."""

    def __init__(self) -> None:
        self.accept: list[str] = []

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.accept.append(request.headers.get("Accept-Encoding", ""))
        coding = request.path.rsplit("/", 1)[-1]
        plain = _body(request.headers.get("X-Api-Key", ""))
        encoded = {
            "gzip": lambda: gzip.compress(plain),
            "x-gzip": lambda: gzip.compress(plain),
            "deflate": lambda: _deflate(plain),
            "gzip-members": lambda: _gzip_members(plain),
            "br": lambda: b"\x1b\x00\x00\x00not really brotli",
            "gzip, gzip": lambda: gzip.compress(gzip.compress(plain)),
            "corrupt": lambda: gzip.compress(plain)[:40] + b"\x00" * 64,
            "truncated": lambda: gzip.compress(plain)[:-20],
            "bomb": lambda: gzip.compress(b"\x00" * BOMB_SIZE, compresslevel=9),
            "compress": lambda: plain,
            "empty": lambda: b"",
        }[coding.replace("%20", " ")]()
        header = {
            "gzip-members": "gzip",
            "corrupt": "gzip",
            "truncated": "gzip",
            "bomb": "gzip",
            "empty": "gzip",
        }
        status = 206 if request.query.get("partial") else 200
        response = web.StreamResponse(
            status=status,
            headers={
                "Content-Type": "text/plain",
                "Content-Encoding": header.get(coding, coding.replace("%20", " ")),
                "Content-Length": str(len(encoded)),
                "Content-MD5": "of-the-encoded-body",
                "ETag": '"v1"',
            },
        )
        await response.prepare(request)
        if request.method != "HEAD":
            await response.write(encoded)
        await response.write_eof()
        return response


@pytest.fixture
async def up(gw: Harness) -> EncodingUpstream:
    upstream = EncodingUpstream()
    runner, port = await serve(web.Server(upstream.handle))
    gw.cleanups.append(runner)
    injection = Injection(InjectionKind.HEADER, "X-Api-Key", "{secret}")
    api = Api("zipped", f"http://127.0.0.1:{port}/z", injection, "dev")
    directory.add_api(gw.ctx, None, api, Secret(KEY))
    gw.secrets["zipped"] = KEY
    return upstream


def _allowed(gw: Harness) -> dict[str, object]:
    return dict(gw.events(EventType.ACCESS_ALLOWED)[-1].data)


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "gzip-members"])
async def test_a_compressed_answer_is_decoded_then_scrubbed(
    gw: Harness, up: EncodingUpstream, coding: str
) -> None:
    sent = {"Accept-Encoding": "gzip, deflate, br"}
    reply = await gw.call("GET", f"/zipped/v1/{coding}", gw.issue(api="zipped").token, headers=sent)
    assert reply.status == 200
    assert up.accept == ["identity"]  # the caller's Accept-Encoding is not passed on
    assert "Content-Encoding" not in reply.headers
    assert "Content-MD5" not in reply.headers  # it described the encoded bytes
    assert reply.headers["ETag"] == '"v1"'
    expected = _body("*" * len(KEY))
    assert reply.body == expected  # decoded, the secret overwritten, nothing else changed
    assert "error" not in _allowed(gw)


@pytest.mark.parametrize("coding", ["br", "gzip%2C%20gzip", "compress"])
async def test_a_coding_that_cannot_be_decoded_is_refused(
    gw: Harness, up: EncodingUpstream, coding: str
) -> None:
    reply = await gw.call("GET", f"/zipped/v1/{coding}", gw.issue(api="zipped").token)
    assert reply.status == 502
    assert reply.json()["type"].endswith("upstream-encoding-refused")
    assert _allowed(gw)["error"] == "upstream-encoding-refused"


async def test_a_compressed_partial_answer_is_refused(gw: Harness, up: EncodingUpstream) -> None:
    reply = await gw.call("GET", "/zipped/v1/gzip?partial=1", gw.issue(api="zipped").token)
    assert reply.status == 502
    assert reply.json()["type"].endswith("upstream-encoding-refused")


async def test_a_head_answer_keeps_its_headers(gw: Harness, up: EncodingUpstream) -> None:
    reply = await gw.call("HEAD", "/zipped/v1/gzip", gw.issue(api="zipped").token)
    assert reply.status == 200  # no body: nothing to decode or scrub
    assert reply.headers["Content-Encoding"] == "gzip"
    assert reply.headers["Content-MD5"] == "of-the-encoded-body"


@pytest.mark.parametrize("coding", ["corrupt", "truncated"])
async def test_a_corrupt_compressed_answer_is_cut_off(
    gw: Harness, up: EncodingUpstream, coding: str
) -> None:
    token = gw.issue(api="zipped").token
    with pytest.raises(aiohttp.ClientPayloadError):  # the answer had begun: it is cut short
        await gw.call("GET", f"/zipped/v1/{coding}", token)
    assert _allowed(gw)["error"] == "upstream-body-undecodable"


async def test_an_empty_answer_marked_compressed_passes(gw: Harness, up: EncodingUpstream) -> None:
    reply = await gw.call("GET", "/zipped/v1/empty", gw.issue(api="zipped").token)
    assert (reply.status, reply.body) == (200, b"")
    assert "error" not in _allowed(gw)


async def test_a_decompression_bomb_streams_through(gw: Harness, up: EncodingUpstream) -> None:
    reply = await gw.call("GET", "/zipped/v1/bomb", gw.issue(api="zipped").token)
    assert reply.status == 200
    assert len(reply.body) == BOMB_SIZE
    assert reply.body.count(0) == BOMB_SIZE


def test_the_decoder_yields_bounded_pieces() -> None:
    decoder = decoder_for("GZIP ", 200)
    assert isinstance(decoder, Decoder)
    pieces = list(decoder.feed(gzip.compress(b"\x00" * (10 * DECODED_STEP + 5))))
    assert max(len(p) for p in pieces) <= DECODED_STEP
    assert sum(len(p) for p in pieces) + len(decoder.flush()) == 10 * DECODED_STEP + 5
    assert decoder_for("br", 200) is None
    assert decoder_for("gzip", 206) is None
