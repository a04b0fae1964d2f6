"""``Networks`` over a fake kernel: leases, endpoints, /etc/hosts, published ports, clean-up and
parallel processes sharing one root, all without root."""

from __future__ import annotations

import ipaddress
import json
import multiprocessing
import os
from typing import TYPE_CHECKING, Any

import pytest

from pytest_minidock.errors import (
    NetworkError,
    NetworkNotFound,
    PortInUse,
    PrivilegeError,
    UsageError,
)
from pytest_minidock.runtime.network import (
    HOSTS_BEGIN,
    LINK_MTU,
    BridgeMissing,
    Networks,
    PortMapping,
    bridge_name,
    veth_name,
)
from pytest_minidock.runtime.state import Owner

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from pytest_minidock.runtime import nftables

Net = ipaddress.IPv4Network
HOST = [(Net("192.0.2.0/24"), "address 192.0.2.2/24 on eth0")]
BAD_PID = -1
BASE = "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n"


class FakeKernel:
    """A ``Kernel`` that keeps links, bridges, endpoints and nft scripts in dicts and lists."""

    def __init__(self, host: Iterable[tuple[Net, str]] = HOST) -> None:
        self.host = list(host)
        self.links: dict[str, str] = {}  # name -> "bridge" or its bridge's name
        self.bridges: dict[str, tuple[str, int]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.scripts: list[str] = []
        self.forwarding = False
        self.fail_next_nft = False

    def occupied(self) -> list[tuple[Net, str]]:
        mine = [
            (Net(f"{a}/{p}", strict=False), f"address {a}/{p} on {name}")
            for name, (a, p) in self.bridges.items()
        ]
        return [*self.host, *mine]

    def uplink_mtu(self) -> int:
        return 1400

    def link_exists(self, name: str) -> bool:
        return name in self.links

    def create_bridge(self, name: str, mac: str, address: str, prefixlen: int, mtu: int) -> None:
        self.links[name] = "bridge"
        self.bridges[name] = (address, prefixlen)

    def delete_link(self, name: str) -> None:
        self.links.pop(name, None)
        self.bridges.pop(name, None)
        self.endpoints.pop(name, None)

    def release_link(self, name: str) -> None:
        self.delete_link(name)

    def add_endpoint(self, pid: int, **kw: Any) -> None:
        if pid == BAD_PID:
            raise OSError(3, "No such process")
        if self.links.get(kw["bridge"]) != "bridge":
            raise BridgeMissing(f"bridge {kw['bridge']} does not exist")
        self.links[kw["host_ifname"]] = kw["bridge"]
        self.endpoints[kw["host_ifname"]] = {"pid": pid, **kw}

    def ports_of(self, bridges: Iterable[str]) -> dict[str, list[str]]:
        return {
            b: [name for name, master in self.links.items() if master == b]
            for b in bridges
            if b in self.links
        }

    def enable_forwarding(self) -> None:
        self.forwarding = True

    def nft(self, batch: nftables.Batch) -> None:
        if self.fail_next_nft:
            self.fail_next_nft = False
            raise NetworkError("nftables refused minidock's rules: No such file or directory")
        self.scripts.append(batch.script)


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def nets(tmp_path: Path, kernel: FakeKernel) -> Networks:
    return Networks(tmp_path / "root", kernel=kernel, global_lock=tmp_path / "subnets.lock")


def cid(n: int) -> str:
    return f"{n:04x}" * 16


def hosts_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"hosts-{name}"
    path.write_text(BASE.format(name))
    return path


# -- networks -------------------------------------------------------------------------------------
def test_create_makes_a_bridge_on_a_free_subnet_and_its_rules(
    nets: Networks, kernel: FakeKernel
) -> None:
    net = nets.create("web", labels={"team": "a"})
    assert net.subnet == "10.210.0.0/24"
    assert net.gateway == "10.210.0.1"
    assert net.bridge == bridge_name(net.id)
    assert net.mtu == 1400  # the uplink's, so that no packet needs fragmenting on the way out
    assert kernel.bridges == {net.bridge: ("10.210.0.1", 24)}
    assert kernel.forwarding
    assert (
        f"ip saddr 10.210.0.0/24 oifname != {json.dumps(net.bridge)} masquerade"
        in (kernel.scripts[-1])
    )
    second = nets.create("db")
    assert second.subnet == "10.210.1.0/24"
    state = nets.state_json()
    assert [n["name"] for n in state["networks"]] == ["web", "db"]


def test_inspect_and_list_look_like_docker(nets: Networks) -> None:
    net = nets.create("web", subnet="10.9.0.0/24", gateway="10.9.0.254", labels={"a": "b"})
    info = nets.inspect("web")
    assert info["Name"] == "web"
    assert info["Id"] == net.id
    assert info["Driver"] == "bridge"
    assert info["IPAM"]["Config"] == [{"Subnet": "10.9.0.0/24", "Gateway": "10.9.0.254"}]
    assert info["Labels"] == {"a": "b"}
    assert info["Containers"] == {}
    assert info["Options"] == {"com.docker.network.bridge.name": net.bridge}
    assert nets.inspect(net.id[:6])["Name"] == "web"
    assert nets.inspect("host")["Driver"] == "host"
    assert nets.inspect("none")["Driver"] == "null"
    assert nets.inspect("none")["IPAM"]["Config"] == []
    assert [n.name for n in nets.list()] == ["host", "none", "web"]
    with pytest.raises(NetworkNotFound, match="network nope not found"):
        nets.inspect("nope")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": "bridge"}, UsageError, "bridge is a pre-defined network"),
        ({"name": "host"}, UsageError, "host is a pre-defined network"),
        ({"name": "bad name"}, UsageError, 'invalid network name "bad name"'),
        ({"name": "x", "subnet": "10.0.0.1/24"}, UsageError, "it should be 10.0.0.0/24"),
        ({"name": "x", "subnet": "fd00::/64"}, UsageError, "only IPv4"),
        ({"name": "x", "subnet": "nonsense"}, UsageError, "invalid subnet 'nonsense'"),
        ({"name": "x", "gateway": "10.0.0.1"}, UsageError, "--gateway needs --subnet"),
        (
            {"name": "x", "subnet": "10.0.0.0/24", "gateway": "10.0.1.1"},
            UsageError,
            "gateway 10.0.1.1 is not a host address of subnet 10.0.0.0/24",
        ),
        ({"name": "x", "subnet": "192.0.2.0/25"}, NetworkError, "overlaps address 192.0.2.2/24"),
    ],
)
def test_bad_creates_are_refused(
    nets: Networks, kernel: FakeKernel, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        nets.create(**kwargs)
    assert kernel.bridges == {}
    assert [n.name for n in nets.list()] == ["host", "none"]


def test_a_subnet_of_another_network_or_a_taken_name_is_refused(nets: Networks) -> None:
    nets.create("web", subnet="10.9.0.0/16")
    with pytest.raises(NetworkError, match=r"subnet 10\.9\.3\.0/24 overlaps network web"):
        nets.create("db", subnet="10.9.3.0/24")
    with pytest.raises(NetworkError, match="network with name web already exists"):
        nets.create("web")


def test_a_failed_bridge_leaves_no_record(nets: Networks, kernel: FakeKernel) -> None:
    kernel.fail_next_nft = True
    with pytest.raises(NetworkError, match="nftables refused"):
        nets.create("web")
    assert kernel.bridges == {}
    assert [n.name for n in nets.list()] == ["host", "none"]


def test_a_missing_capability_is_a_privilege_error(
    nets: Networks, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(kernel, "create_bridge", refuse)
    with pytest.raises(PrivilegeError, match=r"networks need root \(CAP_NET_ADMIN\)"):
        nets.create("web")
    assert [n.name for n in nets.list()] == ["host", "none"]


def test_remove_refuses_while_containers_are_attached(
    nets: Networks, kernel: FakeKernel, tmp_path: Path
) -> None:
    net = nets.create("web")
    nets.attach("web", cid(1), 100, name="app", hosts_file=hosts_file(tmp_path, "app"))
    with pytest.raises(NetworkError, match=r"network web has active endpoints \(app\)"):
        nets.remove("web")
    nets.remove("web", force=True)
    assert kernel.links == {}
    assert kernel.scripts[-1] == f"add table ip {nets.table}\ndelete table ip {nets.table}\n"
    with pytest.raises(NetworkNotFound):
        nets.get(net.id)
    with pytest.raises(NetworkError, match="bridge is a pre-defined network"):
        nets.remove("bridge")


def test_prune_removes_only_unused_user_networks(nets: Networks) -> None:
    nets.create("used")
    nets.create("unused")
    nets.default()
    nets.attach("used", cid(1), 100, name="app")
    assert nets.prune() == ["unused"]
    assert [n.name for n in nets.list()] == ["bridge", "host", "none", "used"]


# -- endpoints ------------------------------------------------------------------------------------
def test_attach_leases_an_address_and_makes_a_veth_in_the_container(
    nets: Networks, kernel: FakeKernel
) -> None:
    net = nets.create("web")
    a = nets.attach("web", cid(1), 4242, name="/app", aliases=["api", "api"])
    assert (a.ip, a.prefixlen, a.gateway, a.ifname) == ("10.210.0.2", 24, "10.210.0.1", "eth0")
    assert a.aliases == ("api",)
    assert a.host_ifname == veth_name(cid(1), net.id)
    made = kernel.endpoints[a.host_ifname]
    assert made["pid"] == 4242
    assert made["bridge"] == net.bridge
    assert made["gateway"] == "10.210.0.1"
    assert made["mtu"] == LINK_MTU  # host <-> container: 64 KiB segments
    assert made["route_mtu"] == 1400  # the way out: the uplink's
    assert nets.inspect("web")["Containers"][cid(1)]["IPv4Address"] == "10.210.0.2/24"
    assert nets.inspect("web")["Containers"][cid(1)]["Name"] == "app"
    assert a.inspect()["IPAddress"] == "10.210.0.2"
    assert a.inspect()["DNSNames"] == ["api", cid(1)[:12]]
    b = nets.attach("web", cid(2), 4243, name="b")
    assert b.ip == "10.210.0.3"


def test_a_second_network_is_eth1_without_a_default_route(
    nets: Networks, kernel: FakeKernel
) -> None:
    nets.create("front")
    nets.create("back")
    nets.attach("front", cid(1), 100, name="app")
    b = nets.attach("back", cid(1), 100, name="app")
    assert b.ifname == "eth1"
    assert kernel.endpoints[b.host_ifname]["gateway"] is None
    assert [a.network for a in nets.attachments(cid(1))] == ["front", "back"]


def test_the_default_bridge_is_made_on_first_use(nets: Networks, kernel: FakeKernel) -> None:
    assert "bridge" not in [n.name for n in nets.list()]
    a = nets.attach("default", cid(1), 100, name="app")
    assert a.network == "bridge"
    assert nets.default().id == a.network_id
    assert len(kernel.bridges) == 1


def test_attaching_again_gives_the_same_endpoint_or_remakes_it(
    nets: Networks, kernel: FakeKernel
) -> None:
    nets.create("web")
    a = nets.attach("web", cid(1), 100, name="app")
    calls = dict(kernel.endpoints)
    assert nets.attach("web", cid(1), 100, name="app") == a
    assert kernel.endpoints == calls
    # a new process of the same container (restarted): same address, new links
    again = nets.attach("web", cid(1), 200, name="app")
    assert again.ip == a.ip
    assert kernel.endpoints[a.host_ifname]["pid"] == 200


def test_a_lost_bridge_is_made_again(nets: Networks, kernel: FakeKernel) -> None:
    net = nets.create("web")
    kernel.delete_link(net.bridge)  # e.g. after a reboot
    rendered = len(kernel.scripts)
    a = nets.attach("web", cid(1), 100, name="app")
    assert kernel.bridges == {net.bridge: ("10.210.0.1", 24)}
    assert kernel.endpoints[a.host_ifname]["bridge"] == net.bridge
    assert len(kernel.scripts) == rendered + 1  # and its rules


def test_a_failed_attach_leaves_no_lease(nets: Networks, kernel: FakeKernel) -> None:
    nets.create("web")
    with pytest.raises(NetworkError, match="cannot attach container app to network web"):
        nets.attach("web", cid(1), BAD_PID, name="app")
    assert nets.inspect("web")["Containers"] == {}
    assert nets.attach("web", cid(2), 100, name="b").ip == "10.210.0.2"


def test_attach_refuses_pseudo_networks_and_bad_aliases(nets: Networks) -> None:
    with pytest.raises(NetworkError, match="cannot be attached to network none"):
        nets.attach("none", cid(1), 100, name="app")
    with pytest.raises(NetworkError, match="cannot be attached to network host"):
        nets.attach("host", cid(1), 100, name="app")
    nets.create("web")
    with pytest.raises(UsageError, match="invalid network alias 'a b'"):
        nets.attach("web", cid(1), 100, name="app", aliases=["a b"])
    with pytest.raises(NetworkNotFound):
        nets.attach("nope", cid(1), 100, name="app")


def test_detach_frees_the_lease_and_the_veth(nets: Networks, kernel: FakeKernel) -> None:
    nets.create("web")
    a = nets.attach("web", cid(1), 100, name="app")
    nets.detach(cid(1))
    assert a.host_ifname not in kernel.links
    assert nets.attachments(cid(1)) == []
    nets.detach(cid(1))  # twice is fine
    # round robin: the released address is not handed out again at once
    assert nets.attach("web", cid(2), 101, name="b").ip == "10.210.0.3"


# -- /etc/hosts -----------------------------------------------------------------------------------
def test_members_find_each_other_by_name_and_alias_including_later_ones(
    nets: Networks, tmp_path: Path
) -> None:
    nets.create("web")
    app_hosts = hosts_file(tmp_path, "app")
    inode = app_hosts.stat().st_ino
    nets.attach("web", cid(1), 100, name="app", hosts_file=app_hosts, hostname="app")
    text = app_hosts.read_text()
    assert text.startswith("127.0.0.1\tlocalhost\n")
    assert "127.0.1.1" not in text  # the hostname now resolves to the container's address
    assert f"10.210.0.2\tapp {cid(1)[:12]}\n" in text
    db_hosts = hosts_file(tmp_path, "db")
    nets.attach("web", cid(2), 101, name="db", aliases=["database"], hosts_file=db_hosts)
    # the member that was there first learns about the one that came later, in place
    assert f"10.210.0.3\tdb database {cid(2)[:12]}\n" in app_hosts.read_text()
    assert app_hosts.stat().st_ino == inode
    assert f"10.210.0.2\tapp {cid(1)[:12]}\n" in db_hosts.read_text()
    assert nets.hosts_for(cid(2)) == db_hosts.read_text()
    nets.detach(cid(2))
    assert "db" not in app_hosts.read_text()
    # the detached container's own file is back to its base lines
    assert db_hosts.read_text() == BASE.format("db")


def test_the_default_bridge_gives_no_names_of_peers(nets: Networks, tmp_path: Path) -> None:
    one, two = hosts_file(tmp_path, "one"), hosts_file(tmp_path, "two")
    nets.attach("bridge", cid(1), 100, name="one", hosts_file=one, hostname="one")
    nets.attach("bridge", cid(2), 101, name="two", hosts_file=two, hostname="two")
    assert "\ttwo" not in one.read_text()
    assert f"10.210.0.2\tone {cid(1)[:12]}\n" in one.read_text()


def test_peers_on_two_networks_appear_once_per_network(nets: Networks, tmp_path: Path) -> None:
    nets.create("a")
    nets.create("b")
    mine = hosts_file(tmp_path, "me")
    nets.attach("a", cid(1), 100, name="me", hosts_file=mine)
    nets.attach("b", cid(1), 100, name="me", hosts_file=mine)
    nets.attach("a", cid(2), 101, name="x")
    nets.attach("b", cid(3), 102, name="y")
    text = mine.read_text()
    assert text.count(HOSTS_BEGIN) == 1
    assert "10.210.0.3\tx" in text
    assert "10.210.1.3\ty" in text
    assert "127.0.1.1" not in text
    nets.detach(cid(1), "b")
    assert "\ty " not in mine.read_text()
    assert "10.210.0.3\tx" in mine.read_text()


# -- published ports ------------------------------------------------------------------------------
def test_publishing_only_adds_map_elements(nets: Networks, kernel: FakeKernel) -> None:
    nets.create("web")
    nets.attach("web", cid(1), 100, name="app")
    mappings = [PortMapping("tcp", "127.0.0.1", 8080, 80), PortMapping("udp", "0.0.0.0", 53, 53)]
    nets.publish(cid(1), "web", mappings)
    script = kernel.scripts[-1]
    assert script == (
        f"add element ip {nets.table} dnat_tcp {{ 127.0.0.1 . 8080 : 10.210.0.2 . 80 }}\n"
        f"add element ip {nets.table} dnat_udp_any {{ 53 : 10.210.0.2 . 53 }}\n"
    )
    assert nets.ports(cid(1)) == [mappings[1], mappings[0]]
    nets.unpublish(cid(1))
    assert kernel.scripts[-1] == (
        f"delete element ip {nets.table} dnat_tcp {{ 127.0.0.1 . 8080 }}\n"
        f"delete element ip {nets.table} dnat_udp_any {{ 53 }}\n"
    )
    assert nets.ports(cid(1)) == []


def test_a_host_port_published_by_another_container_is_in_use(nets: Networks) -> None:
    nets.create("web")
    nets.attach("web", cid(1), 100, name="a")
    nets.attach("web", cid(2), 101, name="b")
    nets.publish(cid(1), "web", [PortMapping("tcp", "0.0.0.0", 8080, 80)])
    with pytest.raises(PortInUse, match=r"port 127\.0\.0\.1:8080/tcp is already in use"):
        nets.publish(cid(2), "web", [PortMapping("tcp", "127.0.0.1", 8080, 80)])
    nets.publish(cid(2), "web", [PortMapping("udp", "127.0.0.1", 8080, 80)])  # other protocol
    assert nets.ports(cid(2)) == [PortMapping("udp", "127.0.0.1", 8080, 80)]


def test_publish_needs_an_endpoint(nets: Networks) -> None:
    nets.create("web")
    with pytest.raises(NetworkError, match="is not attached to network web"):
        nets.publish(cid(1), "web", [PortMapping("tcp", "127.0.0.1", 8080, 80)])


def test_a_drifted_table_is_rendered_whole_again(nets: Networks, kernel: FakeKernel) -> None:
    nets.create("web")
    nets.attach("web", cid(1), 100, name="app")
    kernel.fail_next_nft = True  # e.g. someone ran `nft flush ruleset`
    nets.publish(cid(1), "web", [PortMapping("tcp", "127.0.0.1", 8080, 80)])
    assert kernel.scripts[-1].startswith(f"add table ip {nets.table}\n")
    assert (
        f"add element ip {nets.table} dnat_tcp {{ 127.0.0.1 . 8080 : 10.210.0.2 . 80 }}"
        in (kernel.scripts[-1])
    )


def test_detach_unpublishes(nets: Networks, kernel: FakeKernel) -> None:
    nets.create("web")
    nets.attach("web", cid(1), 100, name="app")
    nets.publish(cid(1), "web", [PortMapping("tcp", "127.0.0.1", 8080, 80)])
    nets.detach(cid(1))
    assert nets.ports(cid(1)) == []
    assert kernel.scripts[-1].startswith("delete element")


# -- lease, then connect (a container being started) ---------------------------------------------
def test_a_lease_records_forwards_and_names_before_any_link(
    nets: Networks, kernel: FakeKernel, tmp_path: Path
) -> None:
    nets.create("app")
    peer_hosts = hosts_file(tmp_path, "db")
    nets.attach("app", cid(1), 100, name="db", hosts_file=peer_hosts)
    made = len(kernel.endpoints)
    mappings = [PortMapping("tcp", "127.0.0.1", 8080, 80)]
    lease = nets.lease(
        "app", cid(2), name="/web", hosts_file=hosts_file(tmp_path, "web"), mappings=mappings
    )
    assert len(kernel.endpoints) == made  # no link yet: the process may not even exist
    assert lease.endpoint.ip == "10.210.0.3"
    assert lease.endpoint.pid == 0
    assert lease.mappings == tuple(mappings)
    assert kernel.scripts[-1] == (
        f"add element ip {nets.table} dnat_tcp {{ 127.0.0.1 . 8080 : 10.210.0.3 . 80 }}\n"
    )
    assert nets.ports(cid(2)) == mappings
    assert f"10.210.0.3\tweb {cid(2)[:12]}" in peer_hosts.read_text()  # peers know it already
    a = nets.connect(lease, 200)
    assert a == lease.attachment() == nets.attachments(cid(2))[0]
    made_now = kernel.endpoints[a.host_ifname]
    assert (made_now["pid"], made_now["ip"], made_now["ifname"]) == (200, a.ip, "eth0")
    nets.detach(cid(2))
    assert nets.ports(cid(2)) == []
    assert a.host_ifname not in kernel.links


def test_a_lease_makes_the_default_network_on_first_use(nets: Networks) -> None:
    lease = nets.lease("bridge", cid(1), name="a")
    assert lease.network.name == "bridge"
    assert nets.lease("default", cid(2), name="b").network.id == lease.network.id


def test_a_lease_on_a_taken_port_records_nothing(nets: Networks, kernel: FakeKernel) -> None:
    nets.create("app")
    taken = [PortMapping("tcp", "0.0.0.0", 8080, 80)]
    nets.lease("app", cid(1), name="a", mappings=taken)
    with pytest.raises(PortInUse):
        nets.lease("app", cid(2), name="b", mappings=[PortMapping("tcp", "127.0.0.1", 8080, 80)])
    assert nets.attachments(cid(2)) == []
    assert nets.lease("app", cid(3), name="c").endpoint.ip == "10.210.0.3"


def test_connect_remakes_a_lost_bridge(nets: Networks, kernel: FakeKernel) -> None:
    net = nets.create("app")
    lease = nets.lease("app", cid(1), name="a")
    kernel.delete_link(net.bridge)  # e.g. someone deleted it meanwhile
    a = nets.connect(lease, 100)
    assert kernel.bridges == {net.bridge: ("10.210.0.1", 24)}
    assert kernel.endpoints[a.host_ifname]["bridge"] == net.bridge


def test_connect_to_a_dead_process_is_a_network_error(nets: Networks) -> None:
    nets.create("app")
    lease = nets.lease("app", cid(1), name="a")
    with pytest.raises(NetworkError, match="cannot attach container a to network app"):
        nets.connect(lease, BAD_PID)


# -- clean-up -------------------------------------------------------------------------------------
def test_cleanup_removes_what_dead_containers_and_sessions_left(
    nets: Networks, kernel: FakeKernel, tmp_path: Path
) -> None:
    dead_owner = Owner(pid=2**22 + 7, start_time=1, session="gone")
    nets.create("mine", owner=Owner.current("me"))
    nets.create("theirs", owner=dead_owner)
    nets.create("kept")  # owner None: persists like docker's
    nets.create("busy", owner=dead_owner)
    live_hosts = hosts_file(tmp_path, "live")
    nets.attach("mine", cid(1), 100, name="live", hosts_file=live_hosts)
    nets.attach("mine", cid(2), 101, name="dead")
    nets.attach("theirs", cid(3), 102, name="dead2")
    nets.attach("busy", cid(4), 103, name="alive2")
    nets.publish(cid(2), "mine", [PortMapping("tcp", "127.0.0.1", 8080, 80)])
    orphan = "mdv000000000000"
    kernel.links[orphan] = nets.get("kept").bridge  # a veth that no endpoint claims
    assert "dead" in live_hosts.read_text()
    cleaned = nets.cleanup(lambda c: c in (cid(1), cid(4)))
    assert sorted(cleaned.endpoints) == [cid(2), cid(3)]
    assert cleaned.ports == (cid(2),)
    assert cleaned.networks == ("theirs",)
    assert [n.name for n in nets.list()] == ["busy", "host", "kept", "mine", "none"]
    assert orphan not in kernel.links
    assert nets.ports(cid(2)) == []
    assert "dead" not in live_hosts.read_text()
    assert "add element" not in kernel.scripts[-1]  # rendered whole, without the dead port
    assert nets.cleanup(lambda c: True) == type(cleaned)()


def test_destroy_removes_everything(nets: Networks, kernel: FakeKernel) -> None:
    nets.create("web")
    nets.attach("web", cid(1), 100, name="app")
    nets.attach("bridge", cid(2), 101, name="b")
    nets.destroy()
    assert kernel.links == {}
    assert [n.name for n in nets.list()] == ["host", "none"]
    assert kernel.scripts[-1] == f"add table ip {nets.table}\ndelete table ip {nets.table}\n"


def test_a_corrupt_state_file_is_a_clear_error(nets: Networks) -> None:
    nets.dir.mkdir(parents=True)
    (nets.dir / "state.json").write_text("{not json")  # as an older version wrote it
    with pytest.raises(NetworkError, match=r"state in .* is corrupt"):
        nets.list()


def test_the_state_is_two_checksummed_copies_written_in_place(nets: Networks) -> None:
    nets.create("web")
    nets.create("db")
    copies = [nets.dir / "state.0", nets.dir / "state.1"]
    inodes = [p.stat().st_ino for p in copies]
    nets.create("cache")
    assert [p.stat().st_ino for p in copies] == inodes  # rewritten in place, never replaced
    assert [n["name"] for n in nets.state_json()["networks"]] == ["web", "db", "cache"]
    # a torn latest copy (a crash in the middle of a write) leaves the one before it
    latest = max(copies, key=lambda p: p.stat().st_mtime_ns)
    data = bytearray(latest.read_bytes())
    data[-3] ^= 0xFF
    latest.write_bytes(bytes(data))
    assert [n["name"] for n in nets.state_json()["networks"]] == ["web", "db"]
    nets.create("queue")  # written over the torn copy
    assert [n["name"] for n in nets.state_json()["networks"]] == ["web", "db", "queue"]
    for p in copies:
        p.write_bytes(b"garbage")
    with pytest.raises(NetworkError, match=r"state\.0 and state\.1 are corrupt"):
        nets.list()


def test_an_older_versions_state_json_is_read_then_replaced(nets: Networks) -> None:
    nets.create("web")
    old = nets.dir / "state.json"
    old.write_text(json.dumps(nets.state_json()))
    for i in (0, 1):
        (nets.dir / f"state.{i}").unlink(missing_ok=True)
    assert [n.name for n in nets.list()] == ["host", "none", "web"]
    nets.create("db")
    assert old.read_text().startswith("moved: ")  # an older minidock would fail, loudly
    with pytest.raises(json.JSONDecodeError):
        json.loads(old.read_text())
    assert [n["name"] for n in nets.state_json()["networks"]] == ["web", "db"]


# -- parallel processes ---------------------------------------------------------------------------
def _attach_many(args: tuple[str, str, int]) -> list[str]:
    root, lock, worker = args
    nets = Networks(root, kernel=FakeKernel(), global_lock=__import__("pathlib").Path(lock))
    return [
        nets.attach("shared", cid(worker * 1000 + i), os.getpid(), name=f"w{worker}-{i}").ip
        for i in range(15)
    ]


def _create_many(args: tuple[str, str, int]) -> list[str]:
    root, lock, worker = args
    nets = Networks(root, kernel=FakeKernel(), global_lock=__import__("pathlib").Path(lock))
    return [nets.create(f"n{worker}-{i}").subnet for i in range(5)]


def test_parallel_processes_never_share_an_address_or_a_subnet(tmp_path: Path) -> None:
    root, lock = str(tmp_path / "root"), str(tmp_path / "subnets.lock")
    Networks(root, kernel=FakeKernel(), global_lock=tmp_path / "subnets.lock").create("shared")
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        ips = [
            ip
            for chunk in pool.map(_attach_many, [(root, lock, w) for w in range(4)])
            for ip in chunk
        ]
        subnets = [
            s
            for chunk in pool.map(_create_many, [(root, lock, w) for w in range(4)])
            for s in chunk
        ]
    assert len(ips) == 60
    assert len(set(ips)) == 60
    assert len(set(subnets)) == 20
    for a in subnets:
        assert not ipaddress.IPv4Network(a).overlaps(ipaddress.IPv4Network("10.210.0.0/24"))
    state = Networks(tmp_path / "root").state_json()
    shared = next(n for n in state["networks"] if n["name"] == "shared")
    assert sorted(e["ip"] for e in shared["endpoints"]) == sorted(ips)
