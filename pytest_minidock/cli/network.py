"""``minidock network`` commands: create, ls, rm, inspect, prune — docker's names, flags, output."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from pytest_minidock.cli.images import for_each

if TYPE_CHECKING:
    import argparse

    from pytest_minidock.runtime.network import Networks

__all__ = ["add_network_commands"]


def _networks(args: argparse.Namespace) -> Networks:
    from pytest_minidock.runtime.network import Networks
    from pytest_minidock.store.paths import default_root

    return Networks(args.root or default_root())


def _labels(items: list[str]) -> dict[str, str]:
    from pytest_minidock.errors import UsageError

    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid label {item!r}: expected KEY[=VALUE]")
        out[key] = value
    return out


def cmd_create(args: argparse.Namespace) -> int:
    net = _networks(args).create(
        args.name,
        subnet=args.subnet,
        gateway=args.gateway,
        internal=args.internal,
        labels=_labels(args.label),
    )
    print(net.id)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    nets = _networks(args).list()
    if args.quiet:
        for n in nets:
            print(n.short_id)
        return 0
    rows = [("NETWORK ID", "NAME", "DRIVER", "SCOPE")]
    rows += [(n.short_id, n.name, n.driver, "local") for n in nets]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "   " + r[3])
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from pytest_minidock.errors import NetworkNotFound

    networks = _networks(args)

    def remove(name: str) -> None:
        try:
            networks.remove(name)
        except NetworkNotFound:
            if not args.force:
                raise

    return for_each(args.networks, remove)


def cmd_inspect(args: argparse.Namespace) -> int:
    from pytest_minidock.errors import MinidockError

    networks = _networks(args)
    found: list[dict[str, Any]] = []
    status = 0
    for name in args.networks:
        try:
            found.append(networks.inspect(name))
        except MinidockError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            status = 1
    print(json.dumps(found, indent=4))
    return status


def cmd_prune(args: argparse.Namespace) -> int:
    if not args.force and sys.stdin.isatty():
        answer = input(
            "WARNING! This will remove all custom networks not used by at least one container.\n"
            "Are you sure you want to continue? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    removed = _networks(args).prune()
    if removed:
        print("Deleted Networks:")
        for name in removed:
            print(name)
    return 0


def add_network_commands(sub: Any) -> None:
    net = sub.add_parser("network", help="manage networks")
    nsub = net.add_subparsers(dest="network_command", metavar="COMMAND")
    nsub.required = True

    p = nsub.add_parser("create", help="create a network (a bridge with its own subnet)")
    p.add_argument("--subnet", help="subnet in CIDR form (default: a free one is chosen)")
    p.add_argument("--gateway", help="gateway address in the subnet (default: its first host)")
    p.add_argument("--internal", action="store_true", help="no access to outside networks")
    p.add_argument("--label", action="append", default=[], help="set metadata (KEY=VALUE)")
    p.add_argument("-d", "--driver", default="bridge", choices=("bridge",), help="bridge only")
    p.add_argument("name")
    p.set_defaults(func=cmd_create)

    p = nsub.add_parser("ls", aliases=["list"], help="list networks")
    p.add_argument("-q", "--quiet", action="store_true", help="only display network IDs")
    p.set_defaults(func=cmd_ls)

    p = nsub.add_parser("rm", aliases=["remove"], help="remove networks")
    p.add_argument("-f", "--force", action="store_true", help="no error if it does not exist")
    p.add_argument("networks", nargs="+")
    p.set_defaults(func=cmd_rm)

    p = nsub.add_parser("inspect", help="show detailed information on networks")
    p.add_argument("networks", nargs="+")
    p.set_defaults(func=cmd_inspect)

    p = nsub.add_parser("prune", help="remove all unused networks")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.set_defaults(func=cmd_prune)
