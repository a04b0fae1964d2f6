"""``python -m pytest_minidock``: the same as the ``minidock`` command."""

from __future__ import annotations

import sys

from pytest_minidock.cli import entry

if __name__ == "__main__":
    sys.exit(entry())
