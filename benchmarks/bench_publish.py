"""From ``run -p`` to the first HTTP answer: a busybox httpd with a published port, in-process.

Run (as root): ``.venv/bin/python -m benchmarks.bench_publish [--runs 30] [--with-docker]``. Each
run calls
``Engine.run`` with ``publish=("80",)`` on the default bridge network, then connects to the
published 127.0.0.1 port until ``GET /hostname`` answers 200; the time from the call to that
answer is the measure (issue 4's target: median <= 30 ms; docker ~206 ms, podman ~147 ms were
measured on this machine). Also printed: the time ``run`` took (the lease and its forwarded port
while PID 1 is being made, then the veth pair once it has its network namespace) and ``remove``
(unpublish, detach). The root, its bridge and its nftables table are removed at the end.

Side by side, where installed: the same with ``docker run -d -p 127.0.0.1:PORT:80`` (a running
dockerd, or with ``--with-docker`` a private one this benchmark starts and stops by PID) and
``podman run -d -p ...`` (private ``--root``), each timed from the command's start to the first
200, then ``rm -f``; the ratios to ours are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks._roots import remove_work
from benchmarks._stats import Timing
from benchmarks.bench_runtime import WARMUPS, Other, find_docker, find_podman, make_store

TARGET_MS = 30.0
HTTPD = ("httpd", "-f", "-p", "80", "-h", "/etc")


def first_answer(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as c:
            c.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
            if c.recv(64).startswith(b"HTTP/1.1 200"):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no answer on 127.0.0.1:{port}")
        time.sleep(0.0005)


def free_port() -> int:
    """A port free on 127.0.0.1 now (for the other tools, which take a fixed host port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_other(other: Other, runs: int) -> Timing:
    """``run -d -p`` of busybox httpd through another tool, to the first 200; then ``rm -f``."""
    samples = []
    for i in range(WARMUPS + runs):
        port = free_port()
        name = f"mdbench-publish-{os.getpid()}-{i}"
        t0 = time.perf_counter()
        subprocess.run(
            other.run_cmd("-d", "--name", name, "-p", f"127.0.0.1:{port}:80", "busybox", *HTTPD),
            check=True,
            capture_output=True,
            timeout=120,
        )
        first_answer(port, timeout=30)
        t1 = time.perf_counter()
        subprocess.run(other.cmd("rm", "-f", name), check=True, capture_output=True, timeout=120)
        if i >= WARMUPS:
            samples.append(t1 - t0)
    return Timing(f"{other.name} run -d -p → first HTTP 200", tuple(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--with-docker", action="store_true", help="start a private dockerd")
    args = parser.parse_args()

    from pytest_minidock.api import Engine
    from pytest_minidock.spec import Overrides

    work = Path(tempfile.mkdtemp(prefix="minidock-bench-publish-"))
    root, _ = make_store(work)
    engine = Engine(root)
    runs, answers, removes = [], [], []
    try:
        for i in range(WARMUPS + args.runs):
            t0 = time.perf_counter()
            started = engine.run("busybox", Overrides(command=HTTPD, publish=("80",)))
            t1 = time.perf_counter()
            ports = engine.container(started.id).config["NetworkSettings"]["Ports"]
            first_answer(int(ports["80/tcp"][0]["HostPort"]))
            t2 = time.perf_counter()
            engine.remove(started.id, force=True)
            t3 = time.perf_counter()
            if i >= WARMUPS:
                runs.append(t1 - t0)
                answers.append(t2 - t0)
                removes.append(t3 - t2)
        answer = Timing("run -p → first HTTP 200", tuple(answers))
        for timing in (Timing("run -p (lease + connect)", tuple(runs)), answer):
            print(timing.line())
        print(Timing("rm -f (detach + unpublish)", tuple(removes)).line())
        verdict = "met" if answer.median * 1000 <= TARGET_MS else "NOT met"
        print(f"target: median <= {TARGET_MS:.0f} ms: {verdict}")
        others(args, work, answer)
    finally:
        remove_work(work)


def others(args: argparse.Namespace, work: Path, ours: Timing) -> None:
    """docker and podman side by side, where installed."""
    tar = work / "busybox.tar"
    docker, private, note = find_docker(args.with_docker, work)
    print(note)
    try:
        if docker is not None:
            docker.ensure_busybox(tar)
            t = bench_other(docker, args.runs)
            print(t.line())
            print(f"{'':36} docker / ours: {t.median / ours.median:.1f}x")
    finally:
        if private is not None:
            private.stop()
    podman, note = find_podman(work, tar)
    print(note)
    if podman is not None:
        t = bench_other(podman, args.runs)
        print(t.line())
        print(f"{'':36} podman / ours: {t.median / ours.median:.1f}x")


if __name__ == "__main__":
    main()
