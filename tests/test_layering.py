"""The module boundaries of ARCHITECTURE.md, enforced by walking every import with ``ast``.

Data flows one way: a module may import the leaves and the modules to its left, never to its right.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_minidock"

# module (or package) -> the pytest_minidock modules it may import, besides itself and the leaves.
# _record: the in-house dataclasses (cheap to import), used by every layer.
LEAVES = {"errors", "digest", "reference", "capabilities", "_record"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "digest": set(),
    "reference": set(),
    "capabilities": set(),
    "_record": set(),
    "dockerfile": set(),
    "image": set(),
    "store": {"image"},
    "build": {"dockerfile", "image", "store"},
    "registry": {"image", "store"},
    "spec": {"image"},
    "runtime": {"spec", "image", "store"},
    "api": {"dockerfile", "image", "store", "build", "registry", "spec", "runtime", "hookspecs"},
    # hookspecs: types only, imported under TYPE_CHECKING for the hooks' signatures
    "hookspecs": {"api", "fixtures", "registry"},
    # wait: readiness strategies; they talk to a Protocol, never to the library's layers
    "wait": set(),
    "plugin": {"api", "hookspecs", "fixtures", "store"},
    # fixtures: Overrides (spec) are the engine's arguments; handles read logs and state (runtime)
    "fixtures": {"api", "hookspecs", "store", "spec", "runtime", "wait"},
    "cli": {"api", "build", "image", "store", "spec", "runtime"},
    "__init__": {"api", "fixtures", "wait"},
    "__main__": {"cli"},
}
# Only runtime/network.py may import pyroute2; only runtime/_sys.py makes raw syscalls via ctypes.
THIRD_PARTY = {"pyroute2": {"runtime.network"}, "ctypes": {"runtime._sys"}}
# network.py's own netlink helpers (hand-encoded rtnetlink and nf_tables messages): it owns the
# kernel's networking, so nothing else may reach around it.
PRIVATE = {
    "runtime.netlink": {"runtime.network", "runtime.nftables"},
    "runtime.nftables": {"runtime.network"},
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def _dotted(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(rel.parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "pytest_minidock":
                found.extend((node.lineno, f"pytest_minidock.{a.name}") for a in node.names)
    return found


@pytest.mark.parametrize("path", _modules(), ids=_dotted)
def test_imports_follow_the_layering(path: Path) -> None:
    layer = _layer(path)
    assert layer in ALLOWED, f"{_dotted(path)}: layer {layer!r} is not in ARCHITECTURE.md's map"
    allowed = ALLOWED[layer] | LEAVES | {layer}
    bad = []
    for lineno, module in _imports(path):
        top = module.split(".")[0]
        if top == "pytest_minidock":
            parts = module.split(".")
            if len(parts) == 1:
                continue
            target = parts[1]
            if target not in allowed and (target != "__version__"):
                bad.append(f"line {lineno}: imports {module} ({layer} may not import {target})")
        for lib, owners in THIRD_PARTY.items():
            if top == lib and _dotted(path) not in owners:
                bad.append(f"line {lineno}: imports {lib} (only {', '.join(owners)} may)")
    assert not bad, f"{path.relative_to(PACKAGE.parent)}:\n" + "\n".join(bad)


def test_every_layer_is_documented() -> None:
    layers = {_layer(p) for p in _modules()}
    assert layers <= set(ALLOWED), layers - set(ALLOWED)


@pytest.mark.parametrize("path", _modules(), ids=_dotted)
def test_only_the_network_module_speaks_netlink(path: Path) -> None:
    imported = _imports(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):  # from …runtime import nftables
        if isinstance(node, ast.ImportFrom) and node.module == "pytest_minidock.runtime":
            imported += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    bad = []
    for lineno, module in imported:
        for private, owners in PRIVATE.items():
            if module == f"pytest_minidock.{private}" and _dotted(path) not in owners:
                bad.append(f"line {lineno}: imports {module} (only {', '.join(owners)} may)")
    assert not bad, f"{path.relative_to(PACKAGE.parent)}:\n" + "\n".join(bad)
