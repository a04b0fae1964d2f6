"""Import + unpack of a ~100 MB rootfs: ``Store.import_tarball`` next to plain ``tar -x``.

Run: ``.venv/bin/python -m benchmarks.bench_import [--size-mb 100] [--runs 5]``. Prints MB/s for
each, and our throughput as a ratio of tar's. The rootfs is made from real files under /usr (a mix
of binaries, libraries and text) so compression sees realistic data.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from benchmarks._stats import measure


def make_rootfs_tar(out: Path, size_mb: int) -> int:
    """Tar regular files from /usr (sorted, deterministic) until ``size_mb`` of content."""
    budget = size_mb * 1_000_000
    total = 0
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk("/usr"):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                if total + os.path.getsize(path) > budget:
                    continue
                try:
                    tar.add(path, arcname=path.lstrip("/"), recursive=False)
                except OSError:
                    continue
                total += os.path.getsize(path)
                if total >= budget * 0.99:
                    return total
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from pytest_minidock.store.store import Store

    work = Path(tempfile.mkdtemp(prefix="minidock-bench-"))
    try:
        src = work / "rootfs.tar"
        content = make_rootfs_tar(src, args.size_mb)
        size = src.stat().st_size
        print(f"rootfs tar: {size / 1e6:.1f} MB ({content / 1e6:.1f} MB of file content)")
        counter = iter(range(10_000))
        target: dict[str, Path] = {}

        def fresh() -> None:
            d = work / f"run{next(counter)}"
            d.mkdir()
            target["dir"] = d
            subprocess.run(["sync"], check=True)

        def tar_x() -> None:
            subprocess.run(["tar", "-xf", str(src), "-C", str(target["dir"])], check=True)

        def minidock_import(compression: str) -> None:
            store = Store(target["dir"], compression=compression)
            with open(src, "rb") as f:
                store.import_tarball(f, source=str(src))

        def cleanup() -> None:
            for d in work.glob("run*"):
                shutil.rmtree(d, ignore_errors=True)

        t_tar = measure("tar -x", tar_x, args.runs, setup=lambda: (cleanup(), fresh()))
        timings = [t_tar]
        for compression in ("gzip", "none"):
            timings.append(
                measure(
                    f"minidock import (blob {compression} + unpack)",
                    functools.partial(minidock_import, compression),
                    args.runs,
                    setup=lambda: (cleanup(), fresh()),
                )
            )
        cleanup()
        for t in timings:
            print(f"{t.line()}   {size / t.median / 1e6:7.1f} MB/s")
        for t in timings[1:]:
            print(f"{t.name}: {t_tar.median / t.median:.2f}x the throughput of tar -x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
