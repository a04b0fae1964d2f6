"""Published ports and the session network: readiness on a published port by default, ``.addr()``
and ``.url()`` reached from the host, containers reaching each other by fixture name (``links``)
and by ``.ip``, and kept containers listed with their published addresses."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.plugin.conftest import HTTPD, inner_args, remove

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_minidock.api import Engine

pytestmark = [pytest.mark.privileged, pytest.mark.netns, pytest.mark.rootless]

CONFTEST = f"""
from pytest_minidock import container, wait

server = container("busybox", command=["sh", "-c", "sleep 0.3; " + {HTTPD!r}], ports=[8080])
client = container("busybox", command="sleep 600", wait=wait.none(), links=[server])
by_http = container("busybox", command=["sh", "-c", "sleep 0.3; " + {HTTPD!r}], ports=[8080],
                    wait=wait.http(8080, "/health", body="^ok"))
"""


def test_a_published_port_is_waited_for_and_reached_from_the_host(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import urllib.request

        import pytest
        from pytest_minidock.errors import MinidockError

        def test_server(server):
            assert server.timings["ready"] >= 0.25  # the default wait: 8080/tcp LISTENs
            host, port = server.addr(8080)
            assert host == "127.0.0.1" and port > 0
            with urllib.request.urlopen(server.url(8080), timeout=10) as answer:
                assert answer.read() == b"hello\\n"
            with urllib.request.urlopen(server.url(8080, "/health"), timeout=10) as answer:
                assert answer.read() == b"ok\\n"
            with pytest.raises(MinidockError, match=r"port 9090/tcp of container server-\\w+ is "
                               r"not published \\(published: 8080/tcp -> 127.0.0.1:\\d+\\)"):
                server.addr(9090)

        def test_http(by_http):
            assert by_http.timings["ready"] >= 0.25
            with urllib.request.urlopen(by_http.url(8080, "/health"), timeout=10) as answer:
                assert answer.read() == b"ok\\n"
        """
    )
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=2)


def test_linked_containers_reach_each_other_by_fixture_name_and_address(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        def test_client(client):
            (server,) = client.links
            by_name = client.exec("wget -qO- http://server:8080/")
            assert by_name.stdout == b"hello\\n", by_name
            by_ip = client.exec(f"wget -qO- http://{server.ip}:8080/health")
            assert by_ip.stdout == b"ok\\n", by_ip
            assert server.network == client.network
        """
    )
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=1)


def test_kept_containers_are_listed_with_their_published_addresses(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import json, os

        def test_server(server):
            with open(os.environ["OUT"], "w") as f:
                json.dump({"id": server.id, "name": server.name, "port": server.addr(8080)[1]}, f)
        """
    )
    out = pytester.path / "out.json"
    monkeypatch.setenv("OUT", str(out))
    result = pytester.runpytest_subprocess(*inner_args(plugin_root, "--minidock-keep"))
    result.assert_outcomes(passed=1)
    kept = json.loads(out.read_text())
    try:
        assert engine.container(kept["id"]).state.running()
        result.stdout.fnmatch_lines(
            [
                f"kept {kept['name']}: 127.0.0.1:{kept['port']}->8080/tcp",
                f"    minidock --root {plugin_root} exec -it {kept['name']} sh",
            ]
        )
    finally:
        remove(engine, kept["id"])


def test_publish_all_and_the_minidock_fixture_publish_ports(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine
) -> None:
    pytester.makeconftest(
        """
        from pytest_minidock import container

        exposed = container("web:1", publish_all=True)  # -P: its EXPOSEd 8080
        """
    )
    pytester.makepyfile(
        f"""
        import urllib.request
        from pytest_minidock import wait
        from pytest_minidock.spec import Overrides

        def get(url):
            with urllib.request.urlopen(url, timeout=10) as answer:
                return answer.read()

        def test_publish_all(exposed):
            assert exposed.timings["ready"] >= 0.25
            assert get(exposed.url(8080)) == b"hello\\n"

        def test_minidock_run(minidock):
            web = Overrides(command=("sh", "-c", {HTTPD!r}), publish=("127.0.0.1::8080",))
            with minidock.run("busybox", web) as c:
                c.wait_ready(wait.http(8080, "/health"), timeout=10)
                assert get(c.url(8080, "/health")) == b"ok\\n"
        """
    )
    result = pytester.runpytest_inprocess(*inner_args(plugin_root))
    result.assert_outcomes(passed=2)


def test_xdist_workers_each_have_their_network_and_names(
    pytester: pytest.Pytester, plugin_root: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import json, os

        def test_client(client, worker_id):
            (server,) = client.links
            marker = f"echo {worker_id} > /www/who"
            assert server.exec(marker).exit_code == 0
            got = client.exec("wget -qO- http://server:8080/who")
            hosts = client.exec("cat /etc/hosts").stdout.decode()
            with open(os.path.join(os.environ["OUT"], worker_id), "w") as f:
                json.dump({"answer": got.stdout.decode().strip(), "error": got.stderr.decode(),
                           "hosts": hosts, "network": client.network, "ip": server.ip}, f)
        """
    )
    out = pytester.mkdir("out")
    monkeypatch.setenv("OUT", str(out))
    result = pytester.runpytest_subprocess(*inner_args(plugin_root, "-n", "2", "--dist", "each"))
    result.assert_outcomes(passed=2)
    seen = {p.name: json.loads(p.read_text()) for p in out.iterdir()}
    assert seen["gw0"]["answer"] == "gw0", seen  # "server" is each worker's own server
    assert seen["gw1"]["answer"] == "gw1", seen
    assert seen["gw0"]["network"].endswith("-gw0")
    assert seen["gw1"]["network"].endswith("-gw1")
