"""The rootless port relay (``runtime/portfwd.py``) next to direct loopback: time to the first
byte of a new connection, and throughput of a bulk transfer.

Run: ``.venv/bin/python -m benchmarks.bench_portfwd [--mb 200] [--runs 5]``. Prints p50/p90 of
each and the relay's throughput as a ratio of loopback's. No privileges needed: the connector runs
in this process's own network namespace, which measures the relay's own cost.
"""

from __future__ import annotations

import argparse
import socket

from benchmarks._stats import measure
from pytest_minidock.runtime.portfwd import Connector, Relay
from tests.support.servers import tcp_server


def _sink_server() -> tuple[socket.socket, int]:
    """A server that reads everything, then answers with the byte count."""

    def handle(conn: socket.socket) -> None:
        with conn:
            total = 0
            while data := conn.recv(1 << 20):
                total += len(data)
            conn.sendall(str(total).encode())

    return tcp_server(handle, backlog=128)


def _transfer(address: tuple[str, int], payload: bytes) -> None:
    with socket.create_connection(address) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while data := client.recv(100):
            answer += data
    if int(answer) != len(payload):
        raise SystemExit(f"transfer lost bytes: {answer!r} != {len(payload)}")


def _round_trip(address: tuple[str, int]) -> None:
    _transfer(address, b"x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    server, port = _sink_server()
    connector = Connector(lambda: None)
    relay = Relay(connector)
    try:
        host = socket.create_server(("127.0.0.1", 0), backlog=128)
        relayed = relay.publish("tcp", host, "127.0.0.1", port)
        direct = ("127.0.0.1", port)
        payload = b"\0" * (args.mb * 1_000_000)
        for name, address in (("loopback", direct), ("relay", relayed)):
            print(
                measure(
                    f"connect+1 byte+close, {name}", lambda a=address: _round_trip(a), 50
                ).line()
            )
        rates = {}
        for name, address in (("loopback", direct), ("relay", relayed)):
            t = measure(
                f"{args.mb} MB transfer, {name}", lambda a=address: _transfer(a, payload), args.runs
            )
            print(t.line())
            rates[name] = args.mb / t.median
            print(f"{'':36} {rates[name]:9.0f} MB/s")
        print(f"relay throughput / loopback: {rates['relay'] / rates['loopback']:.2f}")
    finally:
        relay.close()
        connector.close()
        server.close()


if __name__ == "__main__":
    main()
