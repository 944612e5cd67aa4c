"""Which upstream addresses the gateway refuses to connect to, unless explicitly allowed.

Link-local addresses (``169.254.0.0/16``, ``fe80::/10``) and the cloud metadata services
on them (``169.254.169.254``, AWS's IPv6 ``fd00:ec2::254``) hand out the credentials of
the machine the gateway runs on: an upstream URL that points there, or a name that comes
to resolve there, would turn a grant into a key to the host. IPv4-mapped IPv6 forms
(``::ffff:169.254.169.254``) are judged as the IPv4 address they carry. Loopback and
private ranges are not refused: the demo and most self-hosted upstreams live there.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

REFUSED_NETWORKS = (
    ip_network("169.254.0.0/16"),  # IPv4 link-local, with the metadata service .169.254
    ip_network("fe80::/10"),  # IPv6 link-local
    ip_network("fd00:ec2::254/128"),  # AWS instance metadata over IPv6
)


def refused_address(host: str) -> str | None:
    """Why ``host`` (an IP address literal) is refused, or None (also for a host name)."""
    try:
        address: IPv4Address | IPv6Address = ip_address(host.strip("[]").partition("%")[0])
    except ValueError:
        return None  # a name: judged on what it resolves to, at connect time
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for network in REFUSED_NETWORKS:
        if address in network:
            return f"{address} is a link-local or cloud-metadata address ({network})"
    return None
