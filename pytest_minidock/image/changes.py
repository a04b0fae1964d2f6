"""``--change`` instructions of ``docker import``/``commit`` applied to a container config.

Supports the instructions docker accepts there: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD,
STOPSIGNAL, USER, VOLUME and WORKDIR, in JSON (exec) or shell form.
"""

from __future__ import annotations

import json
import shlex

from pytest_minidock._record import replace
from pytest_minidock.errors import UsageError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from pytest_minidock.image.model import ContainerConfig

__all__ = ["apply_changes"]

_ALLOWED = (
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "LABEL",
    "ONBUILD",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
)


def _argv(rest: str, shell: tuple[str, ...]) -> tuple[str, ...]:
    text = rest.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    return (*shell, text)


def _pairs(rest: str, keyword: str) -> list[tuple[str, str]]:
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise UsageError(f"--change {keyword} {rest}: {exc}") from exc
    if len(words) >= 2 and "=" not in words[0]:  # legacy form: ENV KEY value with spaces
        return [(words[0], rest.strip()[len(words[0]) :].strip())]
    out = []
    for w in words:
        key, sep, value = w.partition("=")
        if not sep or not key:
            raise UsageError(f"--change {keyword} {rest}: expected KEY=VALUE, got {w!r}")
        out.append((key, value))
    return out


def apply_changes(config: ContainerConfig, changes: list[str]) -> ContainerConfig:
    """Return ``config`` with each ``--change`` line applied in order."""
    for line in changes:
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword not in _ALLOWED:
            raise UsageError(
                f"--change {line!r}: {keyword or 'empty'} is not allowed here (use one of "
                f"{', '.join(_ALLOWED)})"
            )
        shell = config.shell or ("/bin/sh", "-c")
        if keyword == "CMD":
            config = replace(config, cmd=_argv(rest, shell))
        elif keyword == "ENTRYPOINT":
            config = replace(config, entrypoint=_argv(rest, shell))
        elif keyword == "ENV":
            env = {e.partition("=")[0]: e for e in config.env}
            for k, v in _pairs(rest, keyword):
                env[k] = f"{k}={v}"
            config = replace(config, env=tuple(env.values()))
        elif keyword == "LABEL":
            config = replace(config, labels={**config.labels, **dict(_pairs(rest, keyword))})
        elif keyword == "EXPOSE":
            ports = set(config.exposed_ports)
            for p in rest.split():
                ports.add(p if "/" in p else f"{p}/tcp")
            config = replace(config, exposed_ports=tuple(sorted(ports)))
        elif keyword == "VOLUME":
            vols = set(config.volumes)
            vols.update(_argv(rest, ()) if rest.strip().startswith("[") else rest.split())
            config = replace(config, volumes=tuple(sorted(vols)))
        elif keyword == "WORKDIR":
            config = replace(config, working_dir=rest.strip())
        elif keyword == "USER":
            config = replace(config, user=rest.strip())
        elif keyword == "STOPSIGNAL":
            config = replace(config, stop_signal=rest.strip())
        else:  # ONBUILD
            config = replace(config, on_build=(*config.on_build, rest.strip()))
    return config
