"""The pure parts of networking: subnet choice, address leases, names, /etc/hosts, nft rulesets."""

from __future__ import annotations

import ipaddress
import re

import pytest

from pytest_minidock.errors import NetworkError
from pytest_minidock.runtime.network import (
    DEFAULT_POOLS,
    HOSTS_BEGIN,
    HOSTS_END,
    Endpoint,
    Network,
    PortMapping,
    allocate_address,
    bridge_name,
    check_subnet,
    choose_subnet,
    mac_for,
    render_hosts,
    render_ruleset,
    strip_managed,
    veth_name,
)

Net = ipaddress.IPv4Network

# What this VM's routing table looks like, plus a VPN that covers all of 10/8.
HOST = [
    (Net("192.0.2.0/24"), "address 192.0.2.2/24 on eth0"),
    (Net("127.0.0.0/8"), "address 127.0.0.1/8 on lo"),
]


def test_the_first_free_slash_24_of_the_first_pool_is_chosen() -> None:
    assert choose_subnet(HOST) == Net("10.210.0.0/24")


def test_subnets_in_use_by_routes_addresses_or_networks_are_skipped() -> None:
    occupied = [
        *HOST,
        (Net("10.210.0.0/24"), "network a"),
        (Net("10.210.1.128/25"), "route 10.210.1.128/25 dev wg0"),
        (Net("10.210.2.7/32"), "address 10.210.2.7/32 on dummy0"),
    ]
    assert choose_subnet(occupied) == Net("10.210.3.0/24")


def test_a_wide_route_rules_out_a_whole_pool() -> None:
    occupied = [*HOST, (Net("10.0.0.0/8"), "route 10.0.0.0/8 dev tun0")]
    assert choose_subnet(occupied) == Net("172.26.0.0/24")


def test_no_free_subnet_is_a_clear_error() -> None:
    occupied = [(Net("0.0.0.0/1"), "route 0.0.0.0/1 dev vpn"), (Net("128.0.0.0/1"), "route x")]
    with pytest.raises(NetworkError, match="no free subnet left in the address pools"):
        choose_subnet(occupied)


def test_pools_and_prefix_can_be_given() -> None:
    assert choose_subnet([], pools=["10.99.0.0/16"], prefixlen=28) == Net("10.99.0.0/28")
    taken = [(Net("10.99.0.0/28"), "network x")]
    assert choose_subnet(taken, pools=["10.99.0.0/16"], prefixlen=28) == Net("10.99.0.16/28")


def test_every_default_pool_is_private() -> None:
    for pool in DEFAULT_POOLS:
        assert Net(pool).is_private


def test_an_explicit_overlapping_subnet_names_what_it_overlaps() -> None:
    check_subnet(Net("10.5.0.0/24"), HOST)
    with pytest.raises(NetworkError, match=r"subnet 192\.0\.2\.128/25 overlaps address 192\.0\.2"):
        check_subnet(Net("192.0.2.128/25"), HOST)
    with pytest.raises(NetworkError, match="overlaps network web"):
        check_subnet(Net("10.1.0.0/16"), [(Net("10.1.2.0/24"), "network web")])


def test_addresses_go_round_and_skip_the_gateway_and_leases() -> None:
    subnet = Net("10.1.0.0/29")  # hosts .1-.6
    assert allocate_address(subnet, "10.1.0.1", []) == "10.1.0.2"
    assert allocate_address(subnet, "10.1.0.1", ["10.1.0.2"]) == "10.1.0.3"
    # round robin: after .3 was handed out and released, .4 comes next, not .2
    assert allocate_address(subnet, "10.1.0.1", [], last="10.1.0.3") == "10.1.0.4"
    # wrapping past the end, skipping the gateway
    assert allocate_address(subnet, "10.1.0.1", ["10.1.0.2"], last="10.1.0.6") == "10.1.0.3"


def test_a_full_subnet_is_an_error() -> None:
    subnet = Net("10.1.0.0/30")  # hosts .1 (gateway) and .2
    with pytest.raises(NetworkError, match=r"no free address left in subnet 10\.1\.0\.0/30"):
        allocate_address(subnet, "10.1.0.1", ["10.1.0.2"])


def test_interface_names_fit_linux_and_are_stable() -> None:
    nid, cid = "ab" * 32, "cd" * 32
    assert bridge_name(nid) == "md-abababababab"
    assert len(bridge_name(nid)) <= 15
    assert veth_name(cid, nid) == veth_name(cid, nid)
    assert re.fullmatch(r"mdv[0-9a-f]{12}", veth_name(cid, nid))
    assert veth_name(cid, nid) != veth_name(cid, "ef" * 32)


def test_mac_addresses_follow_ip_addresses() -> None:
    assert mac_for("10.210.0.2") == "02:6d:0a:d2:00:02"
    assert mac_for("172.26.255.254") == "02:6d:ac:1a:ff:fe"


BASE = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tweb\n"


def test_hosts_keep_the_base_lines_and_add_own_address_and_peers() -> None:
    text = render_hosts(
        BASE,
        own=[("10.1.0.2", ["web", "c1"])],
        peers=[("10.1.0.3", ["db", "database", "1234567890ab"])],
    )
    assert text == (
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"{HOSTS_BEGIN}\n"
        "10.1.0.2\tweb c1\n"
        "10.1.0.3\tdb database 1234567890ab\n"
        f"{HOSTS_END}\n"
    )


def test_rendering_again_replaces_the_block_instead_of_adding_one() -> None:
    first = render_hosts(BASE, [("10.1.0.2", ["web"])], [("10.1.0.3", ["db"])])
    second = render_hosts(first, [("10.1.0.2", ["web"])], [("10.1.0.4", ["cache"])])
    assert second.count(HOSTS_BEGIN) == 1
    assert "10.1.0.3" not in second
    assert "10.1.0.4\tcache" in second


def test_without_an_address_the_base_is_given_back_unchanged() -> None:
    assert render_hosts(BASE, [], []) == BASE
    assert strip_managed(render_hosts(BASE, [("10.1.0.2", ["web"])], [])) == (
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )


def test_strip_managed_keeps_lines_a_user_added_after_the_block() -> None:
    text = render_hosts(BASE, [("10.1.0.2", ["web"])], []) + "10.9.9.9\tmine\n"
    assert strip_managed(text).endswith("10.9.9.9\tmine\n")
    assert HOSTS_BEGIN not in strip_managed(text)


def _net(name: str, subnet: str, *, internal: bool = False) -> Network:
    nid = (name * 64)[:64]
    return Network(
        id=nid,
        name=name,
        bridge=bridge_name(nid),
        subnet=subnet,
        gateway=str(next(Net(subnet).hosts())),
        internal=internal,
        endpoints=(Endpoint("c" * 64, "web", "10.1.0.2", mac_for("10.1.0.2"), "mdvx", "eth0"),),
    )


def test_the_ruleset_masquerades_outbound_traffic_and_forwards_the_bridge() -> None:
    script = render_ruleset("minidock_k", [_net("a", "10.1.0.0/24")], [])
    lines = script.splitlines()
    assert lines[0] == "add table ip minidock_k"
    assert (
        "add chain ip minidock_k postrouting "
        "{ type nat hook postrouting priority 100; policy accept; }" in lines
    )
    assert (
        'add rule ip minidock_k postrouting ip saddr 10.1.0.0/24 oifname != "md-aaaaaaaaaaaa" '
        "masquerade" in lines
    )
    assert 'add rule ip minidock_k forward iifname "md-aaaaaaaaaaaa" accept' in lines
    # loopback clients of published ports: their replies must come back through the host
    assert (
        'add rule ip minidock_k postrouting oifname "md-aaaaaaaaaaaa" ip saddr 127.0.0.0/8 '
        "masquerade" in lines
    )
    # flushed and refilled in the same transaction: chains are added before, rules after
    assert lines.index("flush chain ip minidock_k forward") < lines.index(
        'add rule ip minidock_k forward iifname "md-aaaaaaaaaaaa" accept'
    )
    assert not any(line.startswith("delete") for line in lines)


def test_published_ports_are_forwarded_before_any_isolation_rule() -> None:
    lines = render_ruleset(
        "t", [_net("a", "10.1.0.0/24"), _net("b", "10.2.0.0/24", internal=True)], []
    ).splitlines()
    forward = [ln for ln in lines if ln.startswith("add rule ip t forward")]
    assert forward[0] == "add rule ip t forward ct status dnat accept"
    assert 'add rule ip t forward iifname "md-aaaaaaaaaaaa" oifname "md-*" oifname != ' in (
        "\n".join(forward)
    )


def test_an_internal_network_is_neither_masqueraded_nor_forwarded_out() -> None:
    lines = render_ruleset("t", [_net("i", "10.2.0.0/24", internal=True)], []).splitlines()
    assert not any("oifname != " in ln and "masquerade" in ln for ln in lines)
    assert 'add rule ip t forward iifname "md-iiiiiiiiiiii" oifname != "md-iiiiiiiiiiii" drop' in (
        lines
    )


def test_published_ports_are_map_elements() -> None:
    ports = [
        (PortMapping("tcp", "127.0.0.1", 8080, 80), "10.1.0.2"),
        (PortMapping("udp", "127.0.0.1", 5353, 53), "10.1.0.2"),
        (PortMapping("tcp", "0.0.0.0", 9000, 9000), "10.1.0.3"),
    ]
    lines = render_ruleset("t", [_net("a", "10.1.0.0/24")], ports).splitlines()
    assert "add element ip t dnat_tcp { 127.0.0.1 . 8080 : 10.1.0.2 . 80 }" in lines
    assert "add element ip t dnat_udp { 127.0.0.1 . 5353 : 10.1.0.2 . 53 }" in lines
    assert "add element ip t dnat_tcp_any { 9000 : 10.1.0.3 . 9000 }" in lines
    assert "add rule ip t ports dnat ip to ip daddr . tcp dport map @dnat_tcp" in lines
    assert "add rule ip t ports fib daddr type local dnat ip to udp dport map @dnat_udp_any" in (
        lines
    )
    assert "add rule ip t output jump ports" in lines
    assert "add rule ip t prerouting jump ports" in lines


def test_nothing_left_deletes_the_table() -> None:
    assert render_ruleset("minidock_k", [], []) == (
        "add table ip minidock_k\ndelete table ip minidock_k\n"
    )


def test_networks_round_trip_through_json() -> None:
    from pytest_minidock.runtime.state import Owner

    net = Network(
        id="f" * 64,
        name="web",
        bridge="md-ffffffffffff",
        subnet="10.1.0.0/24",
        gateway="10.1.0.1",
        labels={"a": "b"},
        owner=Owner(123, 456, "session"),
        endpoints=(
            Endpoint("c" * 64, "web", "10.1.0.2", "02:6d:0a:01:00:02", "mdvx", "eth0", ("w",)),
        ),
    )
    assert Network.from_json(net.to_json()) == net
