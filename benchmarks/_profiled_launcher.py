"""The launcher process with ``profile_runtime``'s stamps (for ``profile_runtime --launcher``)."""

from __future__ import annotations

import os
import sys

from benchmarks import profile_runtime
from pytest_minidock.runtime import launcher

if __name__ == "__main__":
    profile_runtime._role[0] = 3
    profile_runtime._launcher_pid[0] = os.getpid()
    profile_runtime.instrument(owner=False)
    launcher.main(sys.argv[1:])
