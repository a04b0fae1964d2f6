"""Host state that concurrent test processes share (pytest-xdist workers, separate runs), as
root: ``/dev/net/tun`` opened to everyone while any of them needs it and put back by the last
one; a lock around picking subordinate id ranges; an address of its own on the loopback.

The users of ``/dev/net/tun`` are counted in ``STATE_DIR/tun.json`` under ``STATE_DIR/tun.lock``
(a ``filelock``): the device's mode before the first user and the users, each its pid, its start
time and the boot it runs in. A user that died without leaving (a killed worker) no longer counts
when the next one comes or goes, so the last live user restores the mode all the same, and a
state left by an earlier boot is ignored (the device was made anew).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_minidock.runtime.state import process_start_time

if TYPE_CHECKING:
    from collections.abc import Iterator

    from filelock import FileLock

STATE_DIR = Path("/run/minidock-tests")
"""Root's, mode 0700: what the test processes of this host share (never under a directory
other users can write, whose planted state would make root open the device for good)."""

TUN = Path("/dev/net/tun")
OUTSIDE_NET = ipaddress.IPv4Network("198.18.0.0/15")
"""Where ``loopback_address`` takes its addresses (RFC 2544's benchmarking range)."""


def _state_dir(directory: Path) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    found = directory.lstat()
    if (
        not stat.S_ISDIR(found.st_mode)
        or found.st_uid != os.geteuid()
        or found.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        uid = os.geteuid()
        raise RuntimeError(f"{directory} must be a directory only uid {uid} owns and writes")
    return directory


def _lock(directory: Path, name: str) -> FileLock:
    from filelock import FileLock

    return FileLock(str(_state_dir(directory) / f"{name}.lock"), timeout=60)


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _alive(user: dict[str, Any], boot: str) -> bool:
    return user.get("boot") == boot and process_start_time(int(user["pid"])) == user.get("start")


def _me(boot: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "start": process_start_time(os.getpid()), "boot": boot}


def _read(state: Path) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = json.loads(state.read_text())
    except FileNotFoundError:
        return None
    return found


def _write(state: Path, data: dict[str, Any]) -> None:
    part = state.with_name(state.name + ".part")
    part.write_text(json.dumps(data))
    os.replace(part, state)


def open_tun(device: Path = TUN, directory: Path = STATE_DIR) -> None:
    """Count this process as a user of ``device`` and make it mode 0666 (the first user keeps
    the mode it had). A process may do it more than once: each ``close_tun`` undoes one."""
    state = _state_dir(directory) / "tun.json"
    boot = _boot_id()
    with _lock(directory, "tun"):
        data = _read(state)
        users = [u for u in (data or {}).get("users", []) if _alive(u, boot)]
        if data is None or data.get("boot") != boot:  # (no user yet, or one of another boot)
            data = {"boot": boot, "mode": stat.S_IMODE(device.stat().st_mode)}
        # else: keep its mode, also when every user it names died (the device is open because
        # of them: what it was before is the mode recorded)
        os.chmod(device, 0o666)
        data["users"] = [*users, _me(boot)]
        _write(state, data)


def close_tun(device: Path = TUN, directory: Path = STATE_DIR) -> None:
    """Count this process once less (and dead ones no longer) as a user of ``device``; the last
    user puts back the mode it had before the first."""
    state = _state_dir(directory) / "tun.json"
    boot = _boot_id()
    with _lock(directory, "tun"):
        data = _read(state)
        if data is None or data.get("boot") != boot:
            return
        users = [u for u in data.get("users", []) if _alive(u, boot)]
        with contextlib.suppress(ValueError):
            users.remove(_me(boot))
        if users:
            data["users"] = users
            _write(state, data)
            return
        os.chmod(device, int(data["mode"]))
        state.unlink()


@contextlib.contextmanager
def shared_tun(device: Path = TUN, directory: Path = STATE_DIR) -> Iterator[None]:
    """``device`` mode 0666 in the block, for as long as any process is in such a block."""
    open_tun(device, directory)
    try:
        yield
    finally:
        close_tun(device, directory)


@contextlib.contextmanager
def subid_lock(directory: Path = STATE_DIR) -> Iterator[None]:
    """Held while picking a free subordinate id range and giving it to a user (between
    ``subids.free_start`` and ``usermod --add-subuids``), so that no two processes pick the same."""
    with _lock(directory, "subids"):
        yield


def _has_address(address: str) -> bool:
    done = subprocess.run(
        ["ip", "-o", "addr", "show", "to", f"{address}/32"],
        capture_output=True,
        text=True,
        check=True,
    )
    return bool(done.stdout.strip())


@contextlib.contextmanager
def loopback_address(tries: int = 64) -> Iterator[str]:
    """An address of ``OUTSIDE_NET`` on the host's ``lo`` for the block, no other process's:
    the first free one from a place this process's pid picks (``ip addr add`` refuses one that
    is there already: then the next). Removed afterwards, by that exact address."""
    usable = OUTSIDE_NET.num_addresses // 256 * 254  # (no .0 or .255: they look like networks)
    first = int(OUTSIDE_NET.network_address)
    for i in range(tries):
        n = (os.getpid() + i) % usable
        address = str(ipaddress.IPv4Address(first + n // 254 * 256 + n % 254 + 1))
        if _has_address(address):
            continue
        done = subprocess.run(
            ["ip", "addr", "add", f"{address}/32", "dev", "lo"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            if "File exists" in done.stderr:
                continue
            raise RuntimeError(f"ip addr add {address}/32 dev lo: {done.stderr.strip()}")
        break
    else:
        raise RuntimeError(f"no free address of {OUTSIDE_NET} for lo after {tries} tries")
    try:
        yield address
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=True)
