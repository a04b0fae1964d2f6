"""pytest-minidock: test against real services in containers, with no Docker daemon.

The public names are re-exported here; everything else lives in private-by-convention modules
and may change.
"""

from __future__ import annotations

from pytest_minidock.digest import Digest
from pytest_minidock.errors import MinidockError
from pytest_minidock.reference import Reference

__all__ = ["Digest", "MinidockError", "Reference", "__version__"]

__version__ = "0.1.0"
