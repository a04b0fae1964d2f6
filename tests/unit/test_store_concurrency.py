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
