"""Image references: the ``Reference`` value type with docker's normalisation rules.

The grammar and normalisation follow github.com/distribution/reference (``reference.go``,
``regexp.go``, ``normalize.go``), which is what the docker CLI and daemon use::

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [ domain "/" ] remote-name
    domain           := host [ ":" port-number ]
    host             := domain-name | "[" ipv6-address "]"
    domain-name      := domain-component [ "." domain-component ]*
    domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
    port-number      := /[0-9]+/
    remote-name      := path-component [ "/" path-component ]*
    path-component   := alpha-numeric [ separator alpha-numeric ]*
    alpha-numeric    := /[a-z0-9]+/
    separator        := /[_.]|__|[-]+/
    tag              := /[\\w][\\w.-]{0,127}/
    digest           := algorithm ":" hex

Normalisation (docker's ``ParseNormalizedNamed``): the first ``/``-separated component is a
domain only if it contains ``.`` or ``:``, is ``localhost``, or has upper-case letters; otherwise
the domain is ``docker.io``. ``index.docker.io`` is rewritten to ``docker.io``, and a single
component on ``docker.io`` gets the ``library/`` namespace (``redis`` is
``docker.io/library/redis``). A bare 64-character hex string is refused as a name because it is an
image ID. The repository path may be at most 255 characters (the domain is not counted, as in
distribution/reference v0.6).

``Reference.parse`` leaves ``tag`` unset when the text has none; ``with_default_tag()`` adds
``latest`` the way the docker CLI does before a pull.
"""

from __future__ import annotations

import re

from pytest_minidock._record import dataclass, replace
from pytest_minidock.digest import Digest
from pytest_minidock.errors import InvalidDigest, InvalidReference

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "MAX_PATH_LENGTH",
    "MAX_TAG_LENGTH",
    "Reference",
    "is_image_id_prefix",
]

DEFAULT_DOMAIN = "docker.io"
"""The domain of references that name none (Docker Hub)."""

DEFAULT_TAG = "latest"
"""The tag ``with_default_tag()`` adds."""

MAX_PATH_LENGTH = 255
"""Longest repository path (domain excluded) docker accepts."""

MAX_TAG_LENGTH = 128
"""Longest tag docker accepts."""

_LEGACY_DEFAULT_DOMAIN = "index.docker.io"
_DEFAULT_REGISTRY_HOST = "registry-1.docker.io"
_OFFICIAL_PREFIX = "library/"
_LOCALHOST = "localhost"

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"

_PATH_COMPONENT_RE = re.compile(_PATH_COMPONENT, re.ASCII)
_DOMAIN_RE = re.compile(_DOMAIN, re.ASCII)
_TAG_RE = re.compile(_TAG, re.ASCII)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}", re.ASCII)
_ID_PREFIX_RE = re.compile(r"(?:sha256:)?[a-f0-9]{1,64}", re.ASCII)
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_SEPARATOR_CHARS = frozenset("._-")


def is_image_id_prefix(text: str) -> bool:
    """True if ``text`` is 1 to 64 lower-case hex characters, optionally after ``sha256:``.

    Docker resolves such a string as an image ID (prefix) before trying it as a name, so callers
    ask this first and only fall back to ``Reference.parse`` when it is false or nothing matches.
    """
    return _ID_PREFIX_RE.fullmatch(text) is not None


def _looks_like_domain(component: str) -> bool:
    """Docker's test for whether the first path component names a registry."""
    return (
        "." in component
        or ":" in component
        or component == _LOCALHOST
        or component.lower() != component
    )


def _domain_problem(domain: str) -> str | None:
    if _DOMAIN_RE.fullmatch(domain) is None:
        return (
            f"invalid registry domain {domain!r} (expected a host name, an ipv4 address or a "
            "bracketed ipv6 address, with an optional :port)"
        )
    if not _looks_like_domain(domain):
        return (
            f"registry domain {domain!r} would be read as part of the repository path "
            "(a domain must contain '.' or ':', or be 'localhost')"
        )
    if domain == _LEGACY_DEFAULT_DOMAIN:
        return f"registry domain {domain!r} is not in normal form (use {DEFAULT_DOMAIN!r})"
    return None


def _component_problem(component: str) -> str | None:
    if not component:
        return "repository path has an empty component (leading, trailing or doubled '/')"
    if _PATH_COMPONENT_RE.fullmatch(component) is not None:
        return None
    bad = "".join(sorted({c for c in component if c not in _PATH_CHARS}))
    if bad:
        return (
            f"path component {component!r} contains invalid characters {bad!r} "
            "(allowed: a-z, 0-9, '.', '_', '-')"
        )
    if component[0] in _SEPARATOR_CHARS or component[-1] in _SEPARATOR_CHARS:
        return f"path component {component!r} must start and end with a lower-case letter or digit"
    return (
        f"path component {component!r} has an invalid separator "
        "(use a single '.', one or two '_', or any number of '-')"
    )


def _path_problem(domain: str, path: str) -> str | None:
    if any("A" <= c <= "Z" for c in path):
        return f"repository name {path!r} must be lowercase"
    for component in path.split("/"):
        problem = _component_problem(component)
        if problem is not None:
            return problem
    if len(path) > MAX_PATH_LENGTH:
        return f"repository name must not be more than {MAX_PATH_LENGTH} characters"
    if domain == DEFAULT_DOMAIN and "/" not in path:
        return (
            f"repository path {path!r} on {DEFAULT_DOMAIN} is not in normal form "
            f"(use {_OFFICIAL_PREFIX + path!r})"
        )
    return None


def _tag_problem(tag: str) -> str | None:
    if not tag:
        return "tag is empty"
    if len(tag) > MAX_TAG_LENGTH:
        return f"tag is longer than {MAX_TAG_LENGTH} characters"
    if _TAG_RE.fullmatch(tag) is None:
        return (
            f"invalid tag {tag!r} (tags may contain only A-Z, a-z, 0-9, '_', '.' and '-', "
            "and must not start with '.' or '-')"
        )
    return None


def _check(domain: str, path: str, tag: str | None, shown: str) -> None:
    """Raise ``InvalidReference`` quoting ``shown`` unless the parts are valid and normal."""
    problem = _domain_problem(domain) or _path_problem(domain, path)
    if problem is None and tag is not None:
        problem = _tag_problem(tag)
    if problem is not None:
        raise InvalidReference(f"invalid reference {shown!r}: {problem}")


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference: ``domain/path[:tag][@digest]``.

    Construct with ``Reference.parse``; the constructor accepts only the normal form (for
    example ``Reference("docker.io", "library/redis", "7", None)``) and raises
    ``InvalidReference`` otherwise. ``str()`` gives the full normal form and ``familiar()`` the
    short form the docker CLI prints; both parse back to an equal value.
    """

    domain: str
    path: str
    tag: str | None = None
    digest: Digest | None = None

    def __post_init__(self) -> None:
        _check(self.domain, self.path, self.tag, self._format(f"{self.domain}/{self.path}"))

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse and normalise ``text`` as docker does; raise ``InvalidReference`` otherwise.

        The tag stays ``None`` when ``text`` has none (see ``with_default_tag``).
        """
        if not text:
            raise InvalidReference("invalid reference '': repository name must not be empty")
        if _IDENTIFIER_RE.fullmatch(text):
            raise InvalidReference(
                f"invalid reference {text!r}: cannot specify 64-byte hexadecimal strings as a "
                "repository name (that is an image id)"
            )
        rest, at, digest_text = text.partition("@")
        digest: Digest | None = None
        if at:
            if not rest:
                raise InvalidReference(f"invalid reference {text!r}: missing repository name")
            if "@" in digest_text:
                raise InvalidReference(f"invalid reference {text!r}: more than one '@'")
            try:
                digest = Digest.parse(digest_text)
            except InvalidDigest as exc:
                raise InvalidReference(f"invalid reference {text!r}: {exc}") from exc

        first, slash, remainder = rest.partition("/")
        if slash and _looks_like_domain(first):
            domain = first
        else:
            domain, remainder = DEFAULT_DOMAIN, rest
        path, colon, tag_text = remainder.partition(":")
        tag = tag_text if colon else None
        if not path:
            raise InvalidReference(f"invalid reference {text!r}: missing repository name")
        if domain == _LEGACY_DEFAULT_DOMAIN:
            domain = DEFAULT_DOMAIN
        if domain == DEFAULT_DOMAIN and "/" not in path:
            path = _OFFICIAL_PREFIX + path
        _check(domain, path, tag, text)
        return cls(domain, path, tag, digest)

    # -- views -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The full repository name, ``docker.io/library/redis``."""
        return f"{self.domain}/{self.path}"

    @property
    def repository(self) -> str:
        """The repository path without the domain, ``library/redis`` (same as ``path``)."""
        return self.path

    @property
    def registry_host(self) -> str:
        """The host (and port) to contact: ``registry-1.docker.io`` for Docker Hub."""
        return _DEFAULT_REGISTRY_HOST if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def familiar_name(self) -> str:
        """The name as the docker CLI shows it: ``redis``, ``user/app``, ``host:5000/x``.

        Docker Hub names drop ``docker.io/`` (and ``library/`` for official images) unless the
        short form would parse differently: a first component such as ``foo.com`` or
        ``localhost`` would be read as a domain, and a bare 64-hex name as an image ID.
        """
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        short = self.path
        if short.startswith(_OFFICIAL_PREFIX) and "/" not in short[len(_OFFICIAL_PREFIX) :]:
            short = short[len(_OFFICIAL_PREFIX) :]
            if _IDENTIFIER_RE.fullmatch(short):
                return self.path
            return short
        if _looks_like_domain(short.partition("/")[0]):
            return self.name
        return short

    def familiar(self) -> str:
        """The short docker-CLI form: ``redis:latest``, ``user/app:1``, ``localhost:5000/x:y``."""
        return self._format(self.familiar_name)

    def __str__(self) -> str:
        return self._format(self.name)

    def _format(self, name: str) -> str:
        text = name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    # -- derived values ----------------------------------------------------------------------

    def with_tag(self, tag: str) -> Reference:
        """A copy with ``tag`` (validated); the digest, if any, is kept."""
        return replace(self, tag=tag)

    def with_digest(self, digest: Digest) -> Reference:
        """A copy pinned to ``digest``; the tag, if any, is kept."""
        return replace(self, digest=digest)

    def with_default_tag(self) -> Reference:
        """A copy tagged ``latest`` if it has neither tag nor digest, else ``self``."""
        if self.tag is None and self.digest is None:
            return replace(self, tag=DEFAULT_TAG)
        return self
