"""Eight processes importing, tagging, removing and collecting garbage on one store at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

from pytest_minidock.reference import Reference
from pytest_minidock.store.store import Store

if TYPE_CHECKING:
    from pathlib import Path

WORKER = textwrap.dedent(
    """
    import io, sys, tarfile
    from pytest_minidock.reference import Reference
    from pytest_minidock.store.store import Store

    root, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = Store(root)

    def tar(payload):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for name, data in (("shared/common", b"same in every worker"), ("own", payload)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    for r in range(rounds):
        ref = Reference.parse(f"worker{n}:r{r}")
        store.import_tarball(io.BytesIO(tar(f"{n}-{r}".encode() * 1000)), [ref])
        store.tag(str(ref), Reference.parse(f"keep/worker{n}:r{r}"))
        # the same content from every worker: concurrent writers of identical blobs
        store.import_tarball(io.BytesIO(tar(b"common")), [Reference.parse(f"common:w{n}")])
        if r % 2:
            store.remove(str(ref))          # untag only: keep/... still names it
        if r % 3 == 0:
            store.prune()                   # GC racing with the other writers
    """
)


def test_eight_parallel_writers_keep_the_store_consistent(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store(root)
    rounds = 6
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(root), str(n), str(rounds)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(8)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, "\n".join(errors)

    store = Store(root)
    assert store.check() == []
    names = {str(n) for r in store.images() for n in r.names}
    for n in range(8):
        for r in range(rounds):
            assert str(Reference.parse(f"keep/worker{n}:r{r}")) in names
            assert (str(Reference.parse(f"worker{n}:r{r}")) in names) == (r % 2 == 0)
        assert str(Reference.parse(f"common:w{n}")) in names
    # every image can still be unpacked from its blobs
    for record in store.images():
        assert store.lowerdirs(str(record.id))
    assert list(store.paths.tmp.iterdir()) == []


def test_a_writer_killed_mid_import_leaves_no_half_blob(tmp_path: Path) -> None:
    """SIGKILL an importer while its layer is half written: nothing partial becomes visible, the
    store stays consistent, and the next garbage collection removes the dead writer's temp files."""
    import os
    import signal
    import time

    root = tmp_path / "store"
    store = Store(root)
    script = (
        "import sys\n"
        "from pytest_minidock.reference import Reference\n"
        "from pytest_minidock.store.store import Store\n"
        "Store(sys.argv[1]).import_tarball(sys.stdin.buffer, [Reference.parse('half:1')])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(root)],
        stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    # A tar header for a 64 MiB file, then only part of its data: the importer blocks reading.
    import tarfile

    info = tarfile.TarInfo("big")
    info.size = 64 << 20
    proc.stdin.write(info.tobuf(format=tarfile.PAX_FORMAT))
    proc.stdin.write(os.urandom(8 << 20))
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(store.paths.tmp.iterdir()):
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdin.close()
    assert proc.returncode == -signal.SIGKILL

    assert any(store.paths.tmp.iterdir()), "the importer should have been killed mid-write"
    assert list(store.blobs) == []
    assert list(store.paths.snapshots.iterdir()) == []
    assert store.images() == []
    assert store.check() == []
    store.gc()
    assert list(store.paths.tmp.iterdir()) == []
