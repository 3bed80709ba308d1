"""The SSRF guard's address check, exercised without sending a single packet.

Numeric host spellings are resolved by getaddrinfo locally (no DNS traffic); everything else
goes through a fake resolver. Live refusals of loopback targets are in test_dispatcher.py.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.delivery.ssrf import Guard, Policy, ResolutionFailed, TargetRefused, is_global

STRICT = Policy.from_settings(allow_private_networks=False, allow_list=[])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.10",
        "198.18.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "2001:db8::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "::127.0.0.1",  # IPv4-compatible
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
    ],
)
def test_non_global_addresses_are_refused(address: str) -> None:
    assert not is_global(ip_address(address))
    with pytest.raises(TargetRefused):
        STRICT.check("target.example", [ip_address(address)])


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8",
     "64:ff9b::808:808", "2002:808:808::1"],
)  # fmt: skip
def test_public_addresses_pass(address: str) -> None:
    assert is_global(ip_address(address))
    STRICT.check("target.example", [ip_address(address)])


def test_one_private_address_among_public_ones_refuses_the_host() -> None:
    addresses = [ip_address("93.184.215.14"), ip_address("10.0.0.7")]
    with pytest.raises(TargetRefused, match=r"10\.0\.0\.7 is private"):
        STRICT.check("mixed.example", addresses)


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "127.1", "017700000001",
     "10.0.0.1", "012.0.0.1", "169.254.169.254", "0xa9fea9fe", "100.64.0.1", "::1",
     "::ffff:127.0.0.1", "0:0:0:0:0:ffff:7f00:1", "localhost", "[::1]", "LOCALHOST."],
)  # fmt: skip
async def test_odd_spellings_are_judged_by_what_they_resolve_to(host: str) -> None:
    with pytest.raises(TargetRefused):
        await Guard(STRICT).resolve(host)


async def test_allow_list_admits_chosen_networks_and_hosts_only() -> None:
    policy = Policy.from_settings(
        allow_private_networks=False, allow_list=["127.0.0.0/8", "bin.internal", "fd00::/8"]
    )
    guard = Guard(policy)
    assert await guard.resolve("127.0.0.1") == ("127.0.0.1",)
    (mapped,) = await guard.resolve("::ffff:127.0.0.1")
    assert ip_address(mapped) == ip_address("::ffff:127.0.0.1")
    assert await guard.resolve("fd00::2") == ("fd00::2",)
    policy.check("BIN.internal", [ip_address("192.168.3.3")])
    for host in ("10.0.0.1", "::1", "169.254.169.254"):
        with pytest.raises(TargetRefused):
            await guard.resolve(host)


async def test_allow_private_networks_lets_everything_through() -> None:
    guard = Guard(Policy.from_settings(allow_private_networks=True, allow_list=[]))
    assert {"127.0.0.1", "::1"} & set(await guard.resolve("localhost"))
    assert await guard.resolve("10.0.0.1") == ("10.0.0.1",)


class FakeDNS:
    """A resolver whose answers the test controls, counting look-ups."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls = 0

    async def __call__(self, host: str) -> list[str]:
        self.calls += 1
        await asyncio.sleep(0)
        if host not in self.answers:
            raise OSError(f"unknown host {host}")
        return self.answers[host]


async def test_resolutions_are_cached_briefly_and_rebinding_is_caught_on_expiry() -> None:
    dns = FakeDNS({"hooks.example": ["93.184.215.14", "93.184.215.14"]})
    now = [0.0]
    guard = Guard(STRICT, ttl=10.0, clock=lambda: now[0], lookup=dns)
    assert await guard.resolve("hooks.example") == ("93.184.215.14",)
    dns.answers["hooks.example"] = ["127.0.0.1"]  # the name is rebound to loopback
    now[0] = 9.0
    assert await guard.resolve("Hooks.Example.") == ("93.184.215.14",)
    assert dns.calls == 1
    now[0] = 10.5
    with pytest.raises(TargetRefused, match=r"127\.0\.0\.1 is loopback"):
        await guard.resolve("hooks.example")
    assert dns.calls == 2


async def test_concurrent_lookups_of_one_host_share_a_resolution() -> None:
    dns = FakeDNS({"hooks.example": ["2606:4700:4700::1111"]})
    guard = Guard(STRICT, lookup=dns)
    results = await asyncio.gather(*(guard.resolve("hooks.example") for _ in range(20)))
    assert set(results) == {("2606:4700:4700::1111",)}
    assert dns.calls == 1


async def test_unresolvable_names_fail_without_being_cached() -> None:
    dns = FakeDNS({})
    guard = Guard(STRICT, lookup=dns)
    for _ in range(2):
        with pytest.raises(ResolutionFailed):
            await guard.resolve("nowhere.example")
    assert dns.calls == 2


_PRIVATE_V4 = st.one_of(
    st.integers(0x0A000000, 0x0AFFFFFF),  # 10/8
    st.integers(0x7F000000, 0x7FFFFFFF),  # 127/8
    st.integers(0xA9FE0000, 0xA9FEFFFF),  # 169.254/16
    st.integers(0xAC100000, 0xAC1FFFFF),  # 172.16/12
    st.integers(0xC0A80000, 0xC0A8FFFF),  # 192.168/16
    st.integers(0x64400000, 0x647FFFFF),  # 100.64/10
    st.integers(0xE0000000, 0xFFFFFFFF),  # multicast and reserved
).map(IPv4Address)


@given(_PRIVATE_V4)
def test_every_private_ipv4_is_refused_in_every_ipv6_disguise(address: IPv4Address) -> None:
    n = int(address)
    disguises = [
        address,
        IPv6Address(0xFFFF00000000 | n),  # ::ffff:a.b.c.d
        IPv6Address((0x64FF9B << 96) | n),  # 64:ff9b::a.b.c.d
        IPv6Address((0x2002 << 112) | (n << 80) | 1),  # 2002:aabb:ccdd::1
    ]
    for form in disguises:
        assert not is_global(form), form


@given(st.integers(0, 2**32 - 1).map(IPv4Address))
def test_mapped_forms_get_the_same_verdict_as_the_ipv4_address(address: IPv4Address) -> None:
    assert is_global(IPv6Address(0xFFFF00000000 | int(address))) == is_global(address)
