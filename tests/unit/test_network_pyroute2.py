"""pyroute2's message classes are imported without the rest of pyroute2, and the package still
works whole for anyone who imports it afterwards in the same process."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from pytest_minidock.runtime.network import _rtnl_messages
ifinfmsg, ifaddrmsg, rtmsg = _rtnl_messages()
assert ifinfmsg.__name__ == "ifinfmsg" and rtmsg.__name__ == "rtmsg"
light = "asyncio" not in sys.modules and "pyroute2.iproute" not in sys.modules
import pyroute2
from pyroute2 import IPRoute, config
assert IPRoute.__name__ == "IPRoute" and pyroute2.__version__
assert _rtnl_messages()[0] is ifinfmsg
print(light)
"""


def test_message_classes_come_without_the_whole_package() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_an_already_imported_pyroute2_is_used_as_it_is() -> None:
    code = "import pyroute2, sys\n" + CODE.replace(
        "print(light)", "print(sys.modules['pyroute2'] is pyroute2)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
