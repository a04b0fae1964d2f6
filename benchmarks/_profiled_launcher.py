"""The launcher process with ``profile_runtime``'s stamps (for ``profile_runtime --launcher``)."""

from __future__ import annotations

import sys

from benchmarks import profile_runtime
from pytest_minidock.runtime import launcher

if __name__ == "__main__":
    profile_runtime._role[0] = 3
    profile_runtime.instrument()
    launcher.main(sys.argv[1:])
