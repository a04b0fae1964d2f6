"""Published ports without root: ``-p``/``-P`` parsing with docker's errors, reservations (real
sockets on 127.0.0.1), ``minidock port`` output and docker's ``NetworkSettings.Ports``."""

from __future__ import annotations

import multiprocessing
import socket
from typing import Any

import pytest

from pytest_minidock.errors import NetworkError, PortInUse, UsageError
from pytest_minidock.runtime.network import PortMapping
from pytest_minidock.runtime.ports import (
    PortSpec,
    expose_all,
    format_port,
    parse_port_key,
    parse_publish,
    ports_inspect,
    reserve,
)


@pytest.mark.parametrize(
    ("text", "specs"),
    [
        ("80", [PortSpec(80)]),
        ("8080:80", [PortSpec(80, "tcp", "", 8080)]),
        ("127.0.0.1:8080:80", [PortSpec(80, "tcp", "127.0.0.1", 8080)]),
        ("0.0.0.0::80/udp", [PortSpec(80, "udp", "0.0.0.0")]),
        ("127.0.0.1::80", [PortSpec(80, "tcp", "127.0.0.1", 0)]),
        ("0:53/UDP", [PortSpec(53, "udp")]),
        ("53/udp", [PortSpec(53, "udp")]),
        ("80/", [PortSpec(80)]),
        (
            "8000-8001:80-81",
            [PortSpec(80, "tcp", "", 8000), PortSpec(81, "tcp", "", 8001)],
        ),
        ("80-81", [PortSpec(80), PortSpec(81)]),
        ("8000-8010:80", [PortSpec(80, "tcp", "", 8000, 8010)]),
        ("[127.0.0.1]:8080:80", [PortSpec(80, "tcp", "127.0.0.1", 8080)]),
    ],
)
def test_publish_specs(text: str, specs: list[PortSpec]) -> None:
    assert parse_publish(text) == specs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no port specified: <empty>"),
        ("8080:", "no port specified: 8080:<empty>"),
        ("abc", "invalid containerPort: abc"),
        ("0", "invalid containerPort: 0"),
        ("70000", "invalid containerPort: 70000"),
        ("81-80", "invalid containerPort: 81-80"),
        ("x:80", "invalid hostPort: x"),
        ("99999:80", "invalid hostPort: 99999"),
        ("8000-8001:80-82", "invalid ranges specified for container and host Ports: 80-82 and "),
        ("80/sctp", "invalid proto: sctp"),
        ("300.1.1.1:80:80", "invalid IP address: 300.1.1.1"),
        ("[::1]:8080:80", "only IPv4 can be published"),
    ],
)
def test_bad_publish_specs_fail_as_docker_does(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_publish(text)
    assert message in str(info.value)


def test_spec_strings() -> None:
    assert str(PortSpec(80)) == "80/tcp"
    assert str(PortSpec(80, "udp", "127.0.0.1", 8080)) == "127.0.0.1:8080:80/udp"
    assert str(PortSpec(80, "tcp", "", 8000, 8010)) == "8000-8010:80/tcp"
    assert PortSpec(53, "udp").key == "53/udp"


def test_publish_all_expands_the_exposed_ports() -> None:
    assert expose_all(["80/tcp", "53/udp", "8000-8001", "80/tcp"]) == [
        PortSpec(80),
        PortSpec(53, "udp"),
        PortSpec(8000),
        PortSpec(8001),
    ]
    with pytest.raises(UsageError, match="invalid exposed port 'x/tcp'"):
        expose_all(["x/tcp"])


def test_port_keys() -> None:
    assert parse_port_key("80") == (80, "tcp")
    assert parse_port_key("53/udp") == (53, "udp")
    with pytest.raises(UsageError, match="invalid port 'http'"):
        parse_port_key("http")


@pytest.fixture
def free_port() -> int:
    """A port that was free a moment ago (only for tests that expect it taken or free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_port_zero_reserves_a_free_port_and_holds_it() -> None:
    with reserve(parse_publish("0:80") + parse_publish("0:53/udp")) as res:
        tcp, udp = res.mappings
        assert (tcp.proto, tcp.host_ip, tcp.container_port) == ("tcp", "127.0.0.1", 80)
        assert (udp.proto, udp.host_ip, udp.container_port) == ("udp", "127.0.0.1", 53)
        assert tcp.host_port > 0
        assert udp.host_port > 0
        assert len(res.fds()) == 2
        # held: nobody else can bind it meanwhile
        with socket.socket() as other, pytest.raises(OSError, match="Address already in use"):
            other.bind(("127.0.0.1", tcp.host_port))
    with socket.socket() as other:  # released on close
        other.bind(("127.0.0.1", tcp.host_port))


def test_a_taken_port_is_a_clear_error_and_leaves_nothing_bound(free_port: int) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", free_port))
        squatter.listen()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        specs = [*parse_publish(f"{first}:81"), *parse_publish(f"{free_port}:80")]
        with pytest.raises(PortInUse) as info:
            reserve(specs)
        assert str(info.value).startswith(f"port 127.0.0.1:{free_port}/tcp is already in use")
    with socket.socket() as again:  # the first port of the failed call was closed again
        again.bind(("127.0.0.1", first))


def test_the_same_port_twice_in_one_call_is_in_use(free_port: int) -> None:
    with pytest.raises(PortInUse, match=f"port 127.0.0.1:{free_port}/tcp is already in use"):
        reserve(parse_publish(f"{free_port}:80") + parse_publish(f"{free_port}:81"))
    reserve(parse_publish(f"{free_port}:80") + parse_publish(f"{free_port}:80/udp")).close()


def _free_pair() -> int:
    """A port P such that P and P + 1 were both free a moment ago."""
    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port: int = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    pytest.fail("no two neighbouring free ports on 127.0.0.1")


def test_a_host_range_takes_the_first_free_port_of_it() -> None:
    port = _free_pair()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        with reserve(parse_publish(f"{port}-{port + 1}:80")) as res:
            assert res.mappings == (PortMapping("tcp", "127.0.0.1", port + 1, 80),)
            with pytest.raises(
                PortInUse, match=rf"ports 127\.0\.0\.1:{port}-{port + 1}/tcp are all in use"
            ):
                reserve(parse_publish(f"{port}-{port + 1}:80"))


def test_an_address_that_is_not_local_cannot_be_bound() -> None:
    with pytest.raises(NetworkError, match=r"cannot bind 192\.0\.2\.254:8080/tcp"):
        reserve(parse_publish("192.0.2.254:8080:80"))


def test_the_default_host_address_can_be_changed() -> None:
    with reserve(parse_publish("0:80"), default_host_ip="0.0.0.0") as res:
        assert res.mappings[0].host_ip == "0.0.0.0"


def _reserve_and_hold(args: tuple[Any, int]) -> list[int]:
    barrier, n = args
    held = [reserve(parse_publish("0:80")) for _ in range(n)]
    ports = [h.mappings[0].host_port for h in held]
    barrier.wait(timeout=30)  # every worker holds its ports at the same time
    for h in held:
        h.close()
    return ports


def test_parallel_workers_never_get_the_same_ephemeral_port() -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Manager().Barrier(4)
    with ctx.Pool(4) as pool:
        chunks = pool.map(_reserve_and_hold, [(barrier, 50)] * 4)
    ports = [p for chunk in chunks for p in chunk]
    assert len(ports) == 200
    assert len(set(ports)) == 200


MAPPINGS = [
    PortMapping("udp", "127.0.0.1", 5353, 53),
    PortMapping("tcp", "127.0.0.1", 32768, 80),
    PortMapping("tcp", "0.0.0.0", 32769, 80),
]


def test_port_output_like_docker() -> None:
    assert format_port(MAPPINGS) == (
        "53/udp -> 127.0.0.1:5353\n80/tcp -> 0.0.0.0:32769\n80/tcp -> 127.0.0.1:32768\n"
    )
    assert format_port(MAPPINGS, "80") == "0.0.0.0:32769\n127.0.0.1:32768\n"
    assert format_port(MAPPINGS, "53/udp") == "127.0.0.1:5353\n"
    with pytest.raises(UsageError, match="no public port '53/tcp' published for web"):
        format_port(MAPPINGS, "53", name="web")
    assert format_port([]) == ""


def test_ports_for_inspect() -> None:
    assert ports_inspect(MAPPINGS, exposed=["80/tcp", "443/tcp"]) == {
        "80/tcp": [
            {"HostIp": "127.0.0.1", "HostPort": "32768"},
            {"HostIp": "0.0.0.0", "HostPort": "32769"},
        ],
        "443/tcp": None,
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
    }
