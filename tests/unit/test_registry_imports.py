"""The registry modules are cheap to import: what a pull or push does not need is not loaded
(``ssl`` comes with the first HTTPS URL, ``subprocess`` with a credential helper, ``email`` with a
``Retry-After`` date, ``random`` with the first retry)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "ssl",
    "http.client",
    "email.parser",
    "email.utils",
    "concurrent.futures",
    "logging",
    "subprocess",
    "tempfile",
    "random",
    "encodings.idna",
)


def test_the_registry_modules_load_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "import pytest_minidock.registry.pull, pytest_minidock.registry.push\n"
        "import pytest_minidock.registry.client\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
