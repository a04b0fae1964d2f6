"""From ``run -p`` to the first HTTP answer: a busybox httpd with a published port, in-process.

Run (as root): ``.venv/bin/python -m benchmarks.bench_publish [--runs 30]``. Each run calls
``Engine.run`` with ``publish=("80",)`` on the default bridge network, then connects to the
published 127.0.0.1 port until ``GET /hostname`` answers 200; the time from the call to that
answer is the measure (issue 4's target: median <= 30 ms; docker ~206 ms, podman ~147 ms were
measured on this machine). Also printed: the time ``run`` took (the lease and its forwarded port
while PID 1 is being made, then the veth pair once it has its network namespace) and ``remove``
(unpublish, detach). The root, its bridge and its nftables table are removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import tempfile
import time
from pathlib import Path

from benchmarks._stats import Timing
from benchmarks.bench_runtime import WARMUPS, make_store

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    from pytest_minidock.api import Engine
    from pytest_minidock.runtime.network import Networks
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
    finally:
        Networks(root).destroy()
        shutil.rmtree(work, ignore_errors=True)
    answer = Timing("run -p → first HTTP 200", tuple(answers))
    for timing in (Timing("run -p (lease + connect)", tuple(runs)), answer):
        print(timing.line())
    print(Timing("rm -f (detach + unpublish)", tuple(removes)).line())
    verdict = "met" if answer.median * 1000 <= TARGET_MS else "NOT met"
    print(f"target: median <= {TARGET_MS:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
