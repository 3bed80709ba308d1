"""SSRF guard: resolve a webhook target, refuse non-global addresses, hand back the checked ones.

The check runs on *resolved* addresses, never on the host string, so odd spellings
(`2130706433`, `0177.0.0.1`, `0x7f.1`) are judged by what the resolver makes of them. Callers
connect to an address this module returned, never to a second resolution of the name, which
closes the DNS-rebinding window. Nothing here opens a connection:

    policy = Policy.from_settings(allow_private_networks=False, allow_list=["10.1.0.0/16"])
    policy.check("example.com", [ip_address("93.184.215.14")])   # passes, or raises TargetRefused
    guard = Guard(policy)
    addresses = await guard.resolve("example.com")               # resolved, checked, cached briefly
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


class TargetRefused(Exception):
    """The target resolves to an address the guard does not allow; not worth retrying."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"refused {host}: {address} is {reason}")
        self.host = host
        self.address = address
        self.reason = reason


class ResolutionFailed(Exception):
    """The target's name did not resolve (may be transient, so worth retrying)."""


# IANA special-purpose IPv4 ranges: none of these is a public webhook receiver.
_IPV4_RANGES: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), label)
    for net, label in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved (IETF)"),
        ("192.0.2.0/24", "reserved (documentation)"),
        ("192.88.99.0/24", "reserved (6to4 relay)"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved (benchmarking)"),
        ("198.51.100.0/24", "reserved (documentation)"),
        ("203.0.113.0/24", "reserved (documentation)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    )
)

# Only 2000::/3 holds global unicast; inside it, these blocks are still not public.
_IPV6_GLOBAL = IPv6Network("2000::/3")
_IPV6_RANGES: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(net), label)
    for net, label in (
        ("::1/128", "loopback"),
        ("::/128", "unspecified"),
        ("::/96", "reserved (IPv4-compatible)"),
        ("64:ff9b:1::/48", "reserved (local NAT64)"),
        ("100::/64", "reserved (discard)"),
        ("2001::/23", "reserved (IETF)"),
        ("2001:db8::/32", "reserved (documentation)"),
        ("3fff::/20", "reserved (documentation)"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "link-local (site-local)"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = IPv6Network("2002::/16")


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """Return the IPv4 address an IPv6 form carries (mapped, NAT64, 6to4), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


def non_global_reason(address: Address) -> str | None:
    """Say why an address is not a public unicast one, or None when it is."""
    if isinstance(address, IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            reason = non_global_reason(inner)
            return None if reason is None else f"{reason} (embedded {inner})"
        for net6, label in _IPV6_RANGES:
            if address in net6:
                return label
        return None if address in _IPV6_GLOBAL else "reserved"
    for net4, label in _IPV4_RANGES:
        if address in net4:
            return label
    return None


def is_global(address: Address) -> bool:
    """True when the address is public unicast, the only kind a webhook may reach by default."""
    return non_global_reason(address) is None


def normalize_host(host: str) -> str:
    """Lower-case a host and strip IPv6 brackets and a trailing dot, for allow-list matching."""
    return host.strip("[]").rstrip(".").lower()


def _unmapped(address: Address) -> Address:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class Policy:
    """Which targets may be reached: public addresses, plus allow-listed hosts and networks."""

    __slots__ = ("_allow_all", "_hosts", "_networks")

    def __init__(
        self, *, allow_all: bool, hosts: Iterable[str] = (), networks: Iterable[Network] = ()
    ) -> None:
        self._allow_all = allow_all
        self._hosts = frozenset(normalize_host(h) for h in hosts)
        self._networks = tuple(networks)

    @classmethod
    def from_settings(cls, *, allow_private_networks: bool, allow_list: Sequence[str]) -> Policy:
        """Build from webhook settings; an allow-list entry is a host name, an IP or a CIDR."""
        hosts: list[str] = []
        networks: list[Network] = []
        for entry in allow_list:
            try:
                networks.append(ip_network(entry.strip().strip("[]"), strict=False))
            except ValueError:
                hosts.append(entry.strip())
        return cls(allow_all=allow_private_networks, hosts=hosts, networks=networks)

    def check(self, host: str, addresses: Sequence[Address]) -> None:
        """Raise TargetRefused unless every address is public or explicitly allowed."""
        if self._allow_all or normalize_host(host) in self._hosts:
            return
        for address in addresses:
            reason = non_global_reason(address)
            if reason is None:
                continue
            plain = _unmapped(address)
            if any(plain in net for net in self._networks):
                continue
            raise TargetRefused(host, str(address), reason)


async def system_lookup(host: str) -> list[str]:
    """Resolve a host name with the system resolver (getaddrinfo), returning address strings."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


class Guard:
    """Resolve a host with a short cache, check every address against the policy, return them.

    Cached entries keep the addresses, not the verdict, and are checked on every use. A cache
    hit can only route to an address that was checked, so caching never weakens the guard; it
    only delays seeing a DNS change by at most `ttl` seconds. Concurrent look-ups of one host
    share a single resolution.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        ttl: float = 10.0,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        lookup: Callable[[str], Awaitable[list[str]]] = system_lookup,
    ) -> None:
        self.policy = policy
        self._lookup = lookup
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._cache: dict[str, tuple[float, tuple[Address, ...]]] = {}
        self._inflight: dict[str, asyncio.Task[tuple[Address, ...]]] = {}

    async def resolve(self, host: str) -> tuple[str, ...]:
        """Return the checked addresses of host, in resolver order; raise TargetRefused."""
        addresses = await self.lookup(host)
        self.policy.check(host, addresses)
        return tuple(str(a) for a in addresses)

    async def lookup(self, host: str) -> tuple[Address, ...]:
        """Resolve host to addresses (cached briefly), without judging them."""
        key = normalize_host(host)
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]
        task = self._inflight.get(key)
        if task is None:
            # The resolution runs in its own task so that a cancelled caller never cancels it
            # for the others waiting on the same host.
            task = asyncio.ensure_future(self._resolve_uncached(key))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(task)

    async def _resolve_uncached(self, host: str) -> tuple[Address, ...]:
        try:
            literal = ip_address(host.split("%", 1)[0])
        except ValueError:
            pass
        else:
            return (literal,)
        try:
            raw = await self._lookup(host)
        except (OSError, UnicodeError) as exc:
            raise ResolutionFailed(f"cannot resolve {host}: {exc}") from exc
        addresses: list[Address] = []
        for text in raw:
            address = ip_address(text.split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise ResolutionFailed(f"cannot resolve {host}: no addresses")
        return tuple(addresses)

    def _settle(self, key: str, task: asyncio.Task[tuple[Address, ...]]) -> None:
        del self._inflight[key]
        if not task.cancelled() and task.exception() is None:
            self._remember(key, task.result())

    def _remember(self, key: str, addresses: tuple[Address, ...]) -> None:
        if len(self._cache) >= self._max_entries:
            now = self._clock()
            for stale in [k for k, (expires, _) in self._cache.items() if expires <= now]:
                del self._cache[stale]
            while len(self._cache) >= self._max_entries:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = (self._clock() + self._ttl, addresses)
