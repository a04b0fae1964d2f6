"""Base images for the tests, made offline from Debian packages.

``busybox``: a rootfs tar holding ``/bin/busybox`` from Debian's ``busybox-static`` with a link per
applet, ``/etc/passwd`` and ``/etc/group`` like the Docker Hub image; imported as ``busybox:latest``
with ``CMD ["sh"]``. ``debian``: ``debootstrap --variant=minbase bookworm`` into a directory, tarred
(the hook for ``debian:bookworm-slim``; slow, built only on demand).

Run as a script: ``python -m tests.support.rootfs busybox OUT.tar``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
wheel:x:10:root
mail:x:12:
www-data:x:33:
operator:x:37:
users:x:100:
nogroup:x:65534:
"""
BUSYBOX_CHANGES = ['CMD ["sh"]']


def _add(
    tar: tarfile.TarFile,
    name: str,
    *,
    kind: bytes = tarfile.DIRTYPE,
    mode: int = 0o755,
    data: bytes = b"",
    link: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 1700000000
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def busybox_tar(out: Path, busybox: Path = BUSYBOX) -> Path:
    """Write a busybox rootfs tar to ``out`` (needs Debian's busybox-static)."""
    if not busybox.exists():
        raise RuntimeError(f"{busybox} not found: apt-get install busybox-static")
    applets = subprocess.run(
        [str(busybox), "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in (
            "bin",
            "dev",
            "etc",
            "home",
            "proc",
            "root",
            "sys",
            "usr",
            "usr/bin",
            "usr/sbin",
            "sbin",
            "var",
            "var/www",
            "var/spool",
            "var/spool/mail",
        ):
            _add(tar, d, mode=0o700 if d == "root" else 0o755)
        _add(tar, "tmp", mode=0o1777)
        _add(tar, "bin/busybox", kind=tarfile.REGTYPE, data=busybox.read_bytes(), mode=0o755)
        for applet in sorted(set(applets)):
            if applet in ("bin/busybox", ""):
                continue
            if applet.startswith("bin/"):
                _add(tar, applet, kind=tarfile.LNKTYPE, link="bin/busybox")
            else:
                _add(tar, applet, kind=tarfile.SYMTYPE, link="/bin/busybox")
        _add(tar, "etc/passwd", kind=tarfile.REGTYPE, data=PASSWD.encode(), mode=0o644)
        _add(tar, "etc/group", kind=tarfile.REGTYPE, data=GROUP.encode(), mode=0o644)
    return out


def debian_tar(
    out: Path, work: Path, suite: str = "bookworm", mirror: str = "http://deb.debian.org/debian"
) -> Path:
    """debootstrap a minimal Debian into ``work`` and tar it to ``out`` (root, network to the
    Debian mirror, and Debian's ``debootstrap`` package needed; takes minutes)."""
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap not found: apt-get install debootstrap")
    subprocess.run(["debootstrap", "--variant=minbase", suite, str(work), mirror], check=True)
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(work), "-cf", str(out), "."], check=True
    )
    return out


if __name__ == "__main__":
    kind, target = sys.argv[1], Path(sys.argv[2])
    if kind == "busybox":
        busybox_tar(target)
    elif kind == "debian":
        debian_tar(target, Path(os.environ.get("TMPDIR", "/tmp")) / "minidock-debootstrap")
    else:
        sys.exit(f"unknown base image {kind!r}: use busybox or debian")
    print(target)
