"""Connect-time refusal of link-local and cloud-metadata upstream addresses.

Registration refuses such address literals (:func:`jitgate.services.directory.check_base_url`),
but a host name can come to resolve there later (DNS changes, rebinding), and an API may
have been registered before the rule or under another setting. So the gateway judges the
addresses it is about to connect to: :class:`GuardedResolver` drops refused addresses
from every resolution and fails when none is left; literals, which aiohttp never hands
to a resolver, are judged by :func:`jitgate.domain.addresses.refused_address` in the
proxy. Both raise :class:`RefusedAddressError`, which the proxy answers 502
``upstream-address-refused``.
"""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver, ResolveResult

from jitgate.domain.addresses import refused_address


class RefusedAddressError(OSError):
    """The upstream is (or resolves only to) a refused address."""


class GuardedResolver(AbstractResolver):
    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [r for r in results if refused_address(r["host"]) is None]
        if not kept:
            raise RefusedAddressError(f"{host} resolves only to link-local or metadata addresses")
        return kept

    async def close(self) -> None:
        await self._inner.close()
