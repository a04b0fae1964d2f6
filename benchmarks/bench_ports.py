"""Networks and published ports: throughput through a published port against direct loopback, and
the latency of attach, publish, detach and attach → first HTTP response.

Run (as root): ``.venv/bin/python -m benchmarks.bench_ports [--runs 30] [--mb 1024]
[--repeats 5]``. Measures, in one run, with ``runtime.network`` alone (no container runtime: each
"container" is a process started with ``unshare --net``):

1. throughput of one TCP connection, both directions, to the same Python server (``recv_into`` /
   ``sendall`` with 4 MiB buffers) once on 127.0.0.1 in this namespace (direct loopback) and once
   in a netns behind a published 127.0.0.1 port (kernel DNAT, veth, bridge): ``--repeats``
   alternating pairs of ``--mb`` MiB transfers, the medians, and the median of the pairs' ratios
   published / direct (target ≥ 0.5);
2. latency percentiles: ``attach`` (lease, veth pair, address, route, /etc/hosts), ``reserve`` +
   ``publish`` of one port (bind + one nf_tables batch that only adds map elements), ``detach``
   of a live container (returns once the kernel has unlisted the veth; its RCU grace period is
   waited for by a daemon thread), ``lease`` (address, /etc/hosts, forwarded port: what the
   runtime does while PID 1 is being made) and ``connect`` (the veth pair, once PID 1 has its
   netns), and, end to end, attach + publish, and lease + connect, to the first HTTP response of
   a busybox ``httpd`` already running in the netns;
3. the one-off costs: importing ``runtime.network`` in a fresh process (no pyroute2: messages are
   encoded and dumps decoded by hand), reading what choosing a subnet and an MTU needs (the
   host's links, addresses and routes: ``LinuxKernel.occupied`` + ``uplink_mtu``, every session
   that makes a network), and, for comparison, importing pyroute2 in a fresh process (what
   decoding those dumps with its message classes cost each such process before: ~a fifth of it).

Every process the benchmark starts is killed by its PID; the network and its rules are removed.

``--rootless`` (as root) measures instead, through the container runtime (``Engine.run`` of
busybox, as root and as a throw-away ordinary user with a subordinate id range, see
``benchmarks._rootless``; rootless, the user's network holder owns the bridge and a published
port is relayed in user space by the container's monitor or launcher): ``run -p 0:80`` of a
busybox ``httpd`` on the default bridge → its first HTTP 200 on 127.0.0.1 (and the ``rm -f``
after it), and download throughput of one ``--mb`` MiB file from a busybox ``httpd`` on 127.0.0.1
(direct loopback) and from one in a container through its published port, ``--repeats``
alternating pairs (httpd serves files only: no upload figure). Prints root's and rootless
figures side by side (p50 / p90 and rootless / root).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks._stats import Timing, measure

if TYPE_CHECKING:
    from pytest_minidock.runtime.network import Lease, Networks

WARMUPS = 3
SETTLE = 0.1  # seconds between samples (untimed), see ``finish``
TARGET_RATIO = 0.5
SERVER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen()
print(srv.getsockname()[1], flush=True)
buf = bytearray(4 << 20)
view = memoryview(buf)
while True:
    conn, _ = srv.accept()
    with conn:
        head = b""
        while len(head) < 9:
            head += conn.recv(9 - len(head))
        mode, size = head[:1], int.from_bytes(head[1:], "big")
        if mode == b"U":  # upload: count, then answer
            got = 0
            while got < size:
                n = conn.recv_into(view)
                if not n:
                    break
                got += n
            conn.sendall(got.to_bytes(8, "big"))
        else:  # download: send, then half-close
            left = size
            while left:
                n = min(left, len(buf))
                conn.sendall(view[:n])
                left -= n
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)
"""


class Children:
    """The processes the benchmark starts; ``stop`` kills each by its PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], *, netns: bool) -> tuple[int, str]:
        """Start ``argv`` (in a new netns with ``netns``); its PID and its first line of output."""
        full = ["unshare", "--net", "--", *argv] if netns else argv
        proc = subprocess.Popen(full, stdout=subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None
        return proc.pid, proc.stdout.readline().decode().strip()

    def stop(self, pid: int | None = None) -> None:
        for proc in [p for p in self.procs if pid is None or p.pid == pid]:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            self.procs.remove(proc)


# -- throughput -----------------------------------------------------------------------------------
def transfer(port: int, mode: str, size: int) -> float:
    """Seconds to move ``size`` bytes over one connection to 127.0.0.1:``port`` (U up, D down)."""
    block = memoryview(bytearray(os.urandom(1 << 20)) * 4)
    buf = bytearray(4 << 20)
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall(mode.encode() + size.to_bytes(8, "big"))
        if mode == "U":
            left = size
            while left:
                n = min(left, len(block))
                conn.sendall(block[:n])
                left -= n
            answer = b""
            while len(answer) < 8:
                answer += conn.recv(8 - len(answer))
            got = int.from_bytes(answer, "big")
        else:
            got = 0
            while n := conn.recv_into(buf):
                got += n
    elapsed = time.perf_counter() - t0
    if got != size:
        raise RuntimeError(f"moved {got} of {size} bytes")
    return elapsed


def throughput(
    direct: int, published: int, mode: str, size: int, repeats: int
) -> tuple[float, float, float]:
    """Median MiB/s direct and through the published port, and the median of the per-pair
    ratios: transfers alternate (direct, published) so that load from elsewhere on the machine
    hits both sides alike."""
    for port in (direct, published):  # warm-up
        transfer(port, mode, min(size, 64 << 20))
    pairs = []
    for _ in range(repeats):
        a = size / transfer(direct, mode, size) / (1 << 20)
        b = size / transfer(published, mode, size) / (1 << 20)
        pairs.append((a, b))
    return (
        statistics.median(a for a, _ in pairs),
        statistics.median(b for _, b in pairs),
        statistics.median(b / a for a, b in pairs),
    )


def bench_throughput(nets: Networks, children: Children, mb: int, repeats: int) -> None:
    from pytest_minidock.runtime import ports

    size = mb << 20
    direct_pid, direct_port = children.start(
        [sys.executable, "-c", SERVER, "127.0.0.1", "0"], netns=False
    )
    pid, _ = children.start([sys.executable, "-c", SERVER, "0.0.0.0", "7000"], netns=True)
    nets.attach("bench", "b" * 64, pid, name="bulk")
    reserved = ports.reserve(ports.parse_publish("0:7000"))
    try:
        ports.publish(nets, "b" * 64, "bench", reserved)
        published = reserved.mappings[0].host_port
        for mode, label in (
            ("U", "upload   (client → server)"),
            ("D", "download (server → client)"),
        ):
            direct, through, ratio = throughput(int(direct_port), published, mode, size, repeats)
            verdict = "ok" if ratio >= TARGET_RATIO else f"BELOW the {TARGET_RATIO:.0%} target"
            print(
                f"{label}: direct loopback {direct:8.0f} MiB/s   published port {through:8.0f} "
                f"MiB/s   ratio {ratio:.2f} ({verdict})"
            )
    finally:
        ports.unpublish(nets, "b" * 64)
        reserved.close()
        nets.detach("b" * 64)
        children.stop(pid)
        children.stop(direct_pid)


# -- latency --------------------------------------------------------------------------------------
def bench_latency(nets: Networks, children: Children, runs: int, www: Path) -> list[Timing]:
    from pytest_minidock.runtime import ports

    state: dict[str, int] = {"n": 0, "pid": 0}
    held: list[ports.PublishedPorts] = []

    def cid() -> str:
        return f"{state['n']:064x}"

    def new_holder(argv: list[str]) -> None:
        state["n"] += 1
        state["pid"] = children.start(["sh", "-c", 'echo up; exec "$@"', "sh", *argv], netns=True)[
            0
        ]

    def finish() -> None:
        if state["pid"]:
            ports.unpublish(nets, cid())
            for r in held:
                r.close()
            held.clear()
            nets.detach(cid())
            children.stop(state["pid"])
            state["pid"] = 0
            # the kernel tears the dead netns down in a work queue, holding the RTNL lock that
            # every link change needs: let it finish so that it is not counted in the next sample
            time.sleep(SETTLE)

    def setup_sleep() -> None:
        finish()
        new_holder(["sleep", "600"])

    def attach() -> None:
        nets.attach("bench", cid(), state["pid"], name=f"c{state['n']}")

    def setup_attached() -> None:
        setup_sleep()
        attach()

    def publish() -> None:
        reserved = ports.reserve(ports.parse_publish("0:80"))
        held.append(reserved)
        ports.publish(nets, cid(), "bench", reserved)

    def detach() -> None:
        nets.detach(cid())

    def setup_httpd() -> None:
        finish()
        new_holder(["busybox", "httpd", "-f", "-p", "80", "-h", str(www)])

    leases: list[Lease] = []

    def lease() -> None:
        reserved = ports.reserve(ports.parse_publish("0:80"))
        held.append(reserved)
        leases.append(nets.lease("bench", cid(), name=f"c{state['n']}", mappings=reserved.mappings))

    def connect() -> None:
        nets.connect(leases[-1], state["pid"])

    def setup_leased() -> None:
        setup_sleep()
        lease()

    def setup_leased_httpd() -> None:
        setup_httpd()
        lease()

    def first_response() -> None:
        attach()
        publish()
        answer()

    def first_response_leased() -> None:
        connect()
        answer()

    def answer() -> None:
        url = f"http://127.0.0.1:{held[-1].mappings[0].host_port}/"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    response.read()
                return
            except OSError:
                time.sleep(0.0005)

    timings = []
    try:
        for name, fn, setup in (
            ("attach", attach, setup_sleep),
            ("reserve + publish one port", publish, setup_attached),
            ("detach (live netns)", detach, setup_attached),
            ("lease (one port)", lease, setup_sleep),
            ("connect", connect, setup_leased),
            ("attach + publish → first HTTP 200", first_response, setup_httpd),
            ("(leased) connect → first HTTP 200", first_response_leased, setup_leased_httpd),
        ):
            measure(name, fn, WARMUPS, setup)
            timings.append(measure(name, fn, runs, setup))
    finally:
        finish()
    return timings


def import_ms(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    samples = []
    for _ in range(5):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        samples.append(float(out.stdout) * 1000)
    return statistics.median(samples)


# -- rootless beside root, through the container runtime -----------------------------------------
HTTPD = "mkdir -p /www && echo hello > /www/index.html && {fill}exec httpd -f -p 80 -h /www"
ROOTLESS_ROWS = (
    ("run -p 0:80 httpd → first HTTP 200", "run -p → first HTTP 200"),
    ("rm -f of it", "rm -f"),
)
RATE_ROWS = (
    ("download, direct loopback (busybox httpd)", "direct"),
    ("download, published port (container)", "published"),
    ("published / direct (per pair)", "ratio"),
)


def http_get(port: int, path: str = "/") -> int:
    """Bytes of the body of ``GET path`` on 127.0.0.1:``port`` (raises OSError until it
    answers 200)."""
    buf = bytearray(4 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        got = 0
        head = b""
        while n := conn.recv_into(buf):
            if not head:
                head = bytes(buf[:12])
            got += n
    if not head.startswith(b"HTTP/1.") or head[9:12] != b"200":
        raise ConnectionError(f"127.0.0.1:{port}{path}: {head!r}")
    return got


def first_200(port: int, path: str = "/", deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            http_get(port, path)
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.0005)


def rootless_child(work: Path, runs: int, mb: int, repeats: int) -> None:
    """The measuring part of ``--rootless``, run as root and as the user: JSON samples."""
    from benchmarks._rootless import emit
    from benchmarks.bench_runtime import make_store, stop_launcher
    from pytest_minidock.api import Engine
    from pytest_minidock.spec import Overrides

    root = work / "root"
    if not root.is_dir():
        root, _ = make_store(work)
    engine = Engine(root)
    size = mb << 20
    first: list[float] = []
    removed: list[float] = []
    values: dict[str, list[float]] = {"direct": [], "published": [], "ratio": []}
    direct: subprocess.Popen[bytes] | None = None
    big: str | None = None
    try:
        serve = Overrides(command=("sh", "-c", HTTPD.format(fill="")), publish=("0:80",))
        for i in range(WARMUPS + runs):
            t0 = time.perf_counter()
            started = engine.run("busybox", serve)
            port = engine.port(started.id)[0].host_port
            first_200(port)
            t1 = time.perf_counter()
            engine.remove(started.id, force=True)
            t2 = time.perf_counter()
            if i >= WARMUPS:
                first.append(t1 - t0)
                removed.append(t2 - t1)
            time.sleep(SETTLE)
        # throughput: the same file from a host httpd and from a container's
        www = work / "www"
        www.mkdir(exist_ok=True)
        with open(www / "big", "wb") as f:
            f.truncate(size)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            direct_port = probe.getsockname()[1]
        direct = subprocess.Popen(
            ["busybox", "httpd", "-f", "-p", f"127.0.0.1:{direct_port}", "-h", str(www)]
        )
        fill = f"head -c {size} /dev/zero > /www/big && "
        big = engine.run(
            "busybox",
            Overrides(
                command=("sh", "-c", HTTPD.format(fill=fill)),
                publish=("0:80",),
                tmpfs=(f"/www:size={mb + 16}m",),
            ),
        ).id
        published_port = engine.port(big)[0].host_port
        first_200(direct_port, "/big")
        first_200(published_port, "/big", deadline=120)
        for _ in range(repeats):
            pair = []
            for port in (direct_port, published_port):
                t0 = time.perf_counter()
                got = http_get(port, "/big")
                elapsed = time.perf_counter() - t0
                if got < size:
                    raise RuntimeError(f"port {port}: {got} of {size} bytes")
                pair.append(size / elapsed / (1 << 20))
            values["direct"].append(pair[0])
            values["published"].append(pair[1])
            values["ratio"].append(pair[1] / pair[0])
    finally:
        if direct is not None:
            direct.kill()
            direct.wait()
        if big is not None:
            with contextlib.suppress(Exception):
                engine.remove(big, force=True)
        stop_launcher()
    emit(
        [Timing("run -p → first HTTP 200", tuple(first)), Timing("rm -f", tuple(removed))],
        values,
    )


def rootless_main(runs: int, rounds: int, mb: int, repeats: int) -> None:
    from benchmarks._rootless import RootlessUser, interleaved, table, value_table

    per_round = max(1, -(-runs // rounds))
    per_round_repeats = max(1, -(-repeats // rounds))
    with RootlessUser("mdbench") as pair:
        print(pair.describe())
        print(
            f"runs: {per_round} x {rounds} rounds per side (+{WARMUPS} warm-ups a round); "
            f"throughput: {mb} MiB x {per_round_repeats} x {rounds} rounds   "
            f"cores: {os.cpu_count()}   kernel: {os.uname().release}"
        )
        args = ["--runs", str(per_round), "--mb", str(mb), "--repeats", str(per_round_repeats)]
        (root, root_values), (user, user_values) = interleaved(
            pair, "benchmarks.bench_ports", rounds, args
        )
        table("root vs rootless: published port latency", ROOTLESS_ROWS, root, user)
        value_table(
            "root vs rootless: download throughput, one connection",
            "MiB/s",
            RATE_ROWS,
            root_values,
            user_values,
        )
    for note in pair.cleanup_notes:
        print(f"clean-up: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--mb", type=int, default=1024, help="MiB per throughput transfer")
    parser.add_argument("--repeats", type=int, default=5, help="transfers per throughput figure")
    from benchmarks import _rootless

    _rootless.add_arguments(parser)
    args = parser.parse_args()
    if args.rootless_child is not None:
        rootless_child(args.rootless_child, args.runs, args.mb, args.repeats)
        return
    if os.geteuid() != 0:
        sys.exit("bench_ports needs root (network namespaces, bridges, nftables)")
    if args.rootless:
        rootless_main(args.runs, args.rounds, args.mb, args.repeats)
        return
    for tool in ("unshare", "busybox"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_ports needs {tool} on PATH")

    from pytest_minidock.runtime.network import LinuxKernel, Networks

    work = Path(tempfile.mkdtemp(prefix="minidock-bench-ports-"))
    www = work / "www"
    www.mkdir()
    (www / "index.html").write_text("hello\n")
    nets = Networks(work / "root")
    children = Children()
    try:
        net = nets.create("bench")
        print(
            f"network: {net.subnet} on {net.bridge} (mtu {net.mtu})   runs: {args.runs} "
            f"(+{WARMUPS} warm-ups)   cores: {os.cpu_count()}   kernel: {os.uname().release}"
        )
        print(f"\n== 1. throughput, one TCP connection, {args.mb} MiB x {args.repeats} (median)")
        bench_throughput(nets, children, args.mb, args.repeats)
        print("\n== 2. latency (p50 / p90 / min)")
        for t in bench_latency(nets, children, args.runs, www):
            print(t.line())
        print("\n== 3. one-off")
        ms = import_ms("pytest_minidock.runtime.network")
        print(f"import runtime.network in a fresh process: {ms:.0f} ms (median of 5)")
        kernel = LinuxKernel()
        dumps = measure(
            "occupied() + uplink_mtu()", lambda: (kernel.occupied(), kernel.uplink_mtu()), args.runs
        )
        print(dumps.line())
        print(f"for comparison, import pyroute2 in a fresh process: {import_ms('pyroute2'):.0f} ms")
    finally:
        children.stop()
        nets.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
