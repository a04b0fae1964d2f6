"""The exception tree: every error pytest-minidock raises on purpose.

::

    MinidockError                    base of everything below; ``str()`` is the one-line message
    ├── UsageError                   bad arguments from a user (CLI flag, fixture argument)
    ├── InvalidDigest                a ``sha256:<hex>`` string that is not one
    ├── InvalidReference             an image reference docker would refuse
    ├── DockerfileError              a Dockerfile that cannot be parsed (names FILE:LINE)
    │   ├── DockerfileSyntaxError    text that breaks the language's rules (a bad flag, bad JSON,
    │   │                            an unclosed heredoc, a failed ``${VAR?}``); names FILE:LINE
    │   └── StageNotFound            a build stage name or index the Dockerfile does not define
    ├── BuildError                   a build step that failed
    │   └── BuildStepFailed          a RUN command exited non-zero (names FILE:LINE, the command,
    │                                the exit code and its last output lines)
    ├── ImageError                   image JSON (config, manifest, index, archive) that is malformed
    ├── StoreError                   the local store cannot do what was asked
    │   ├── ImageNotFound            no image by that reference or ID
    │   ├── BlobNotFound             a blob the store should hold is missing
    │   ├── DigestMismatch           content does not hash to the digest it claims
    │   ├── UnsafeLayer              a layer tar would write outside its snapshot or make a
    │   │                            forbidden file (``..``, absolute path, escaping link, device)
    │   └── ImageInUse               ``rmi`` of an image something still uses, without ``-f``
    ├── RegistryError                a registry refused or failed a request (names registry and ref)
    │   ├── RegistryUnreachable      no connection, or it broke or timed out, even after retries
    │   ├── RegistryAuthError        401: credentials missing or rejected (or a helper failed)
    │   │   └── RegistryDenied       403: authenticated, but not allowed to do this
    │   ├── RegistryNotFound         404: no such repository, tag, manifest, blob or platform
    │   ├── RegistryRateLimited      429, still after waiting as ``Retry-After`` asked
    │   ├── RegistryServerError      5xx, still after retries
    │   └── RegistryBadContent       a response that is not what was asked for: wrong digest,
    │                                wrong size, malformed or unsupported manifest
    ├── RuntimeFailure               a container could not be created, started or stopped
    ├── NetworkError                 a network, endpoint or published port cannot be set up
    │   ├── NetworkNotFound          no network by that name or ID
    │   ├── PortInUse                a host port asked for with ``-p`` is taken (names it)
    │   └── SubnetExhausted          every address of a network's subnet is leased
    └── PrivilegeError               the machine or user lacks a capability that is needed (user
                                     namespaces for rootless mode, a cgroup controller, ...)

Foreign errors (``OSError``, ``json.JSONDecodeError``, HTTP errors) are translated at one boundary
each with ``raise ... from exc``. Messages are lower-case, name the path, reference or port involved
and, where there is one, say what to do next.
"""

from __future__ import annotations

__all__ = [
    "BlobNotFound",
    "BuildError",
    "BuildStepFailed",
    "DigestMismatch",
    "DockerfileError",
    "DockerfileSyntaxError",
    "ImageError",
    "ImageInUse",
    "ImageNotFound",
    "InvalidDigest",
    "InvalidReference",
    "MinidockError",
    "NetworkError",
    "NetworkNotFound",
    "PortInUse",
    "PrivilegeError",
    "RegistryAuthError",
    "RegistryBadContent",
    "RegistryDenied",
    "RegistryError",
    "RegistryNotFound",
    "RegistryRateLimited",
    "RegistryServerError",
    "RegistryUnreachable",
    "RuntimeFailure",
    "StageNotFound",
    "StoreError",
    "SubnetExhausted",
    "UnsafeLayer",
    "UsageError",
]


class MinidockError(Exception):
    """Base of every error raised on purpose by pytest-minidock."""


class UsageError(MinidockError):
    """A user passed arguments that cannot work."""


class InvalidDigest(MinidockError, ValueError):
    """A string that is not a valid ``algorithm:hex`` digest."""


class InvalidReference(MinidockError, ValueError):
    """An image reference that docker would refuse."""


class DockerfileError(MinidockError):
    """A Dockerfile that cannot be parsed or understood."""


class DockerfileSyntaxError(DockerfileError):
    """Dockerfile text that breaks a rule of the language, located in its file.

    ``str()`` reads ``FILE:LINE: problem | offending line``; the parts stay available as
    ``problem``, ``path``, ``line`` (1-based), ``end_line`` (the last line of a multi-line
    instruction) and ``text`` (the offending line, without its newline). Errors raised before
    the location is known (``path`` is ``None``) give just the problem.
    """

    def __init__(
        self,
        problem: str,
        path: str | None = None,
        line: int | None = None,
        end_line: int | None = None,
        text: str | None = None,
    ) -> None:
        self.problem = problem
        self.path = path
        self.line = line
        self.end_line = line if end_line is None else end_line
        self.text = text
        where = path or ""
        if path is not None and line is not None:
            where = f"{path}:{line}"
        message = f"{where}: {problem}" if where else problem
        if text is not None and text.strip():
            shown = text.strip()
            if len(shown) > 120:
                shown = shown[:117] + "..."
            message += f" | {shown}"
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.problem, self.path, self.line, self.end_line, self.text))


class StageNotFound(DockerfileError, LookupError):
    """A build stage name or index that the Dockerfile does not define."""


class BuildError(MinidockError):
    """A build that failed."""


class BuildStepFailed(BuildError):
    """A ``RUN`` command of a build that exited with a non-zero code.

    ``str()`` reads ``FILE:LINE: RUN failed: process "CMD" did not complete successfully: exit
    code: N | line`` followed by the command's last output lines; the parts stay available as
    ``path``, ``line``, ``command``, ``exit_code``, ``output`` (the last lines) and ``text``.
    """

    def __init__(
        self,
        path: str,
        line: int,
        command: str,
        exit_code: int,
        *,
        output: tuple[str, ...] = (),
        text: str = "",
    ) -> None:
        self.path = path
        self.line = line
        self.command = command
        self.exit_code = exit_code
        self.output = output
        self.text = text
        message = (
            f"{path}:{line}: RUN failed: process {command!r} did not complete successfully: "
            f"exit code: {exit_code}"
        )
        if text.strip():
            message += f" | {text.strip()}"
        if output:
            message += "\n" + "\n".join(f"  {line_}" for line_ in output)
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        import functools

        rebuild = functools.partial(type(self), output=self.output, text=self.text)
        return (rebuild, (self.path, self.line, self.command, self.exit_code))


class ImageError(MinidockError):
    """Image metadata (config, manifest, index or archive) that is malformed."""


class StoreError(MinidockError):
    """The local store cannot do what was asked."""


class ImageNotFound(StoreError):
    """No image matches the reference or ID."""


class BlobNotFound(StoreError):
    """A blob that should be in the store is missing."""


class DigestMismatch(StoreError):
    """Content does not hash to the digest it claims."""


class UnsafeLayer(StoreError):
    """A layer tar that would escape its snapshot or create a forbidden file."""


class ImageInUse(StoreError):
    """An image that cannot be removed because something still uses it."""


class RegistryError(MinidockError):
    """A registry refused or failed a request."""


class RegistryUnreachable(RegistryError):
    """No connection to a registry, or it broke or timed out, even after retries."""


class RegistryAuthError(RegistryError):
    """A registry wants credentials that are missing or wrong (401), or a helper failed."""


class RegistryDenied(RegistryAuthError):
    """A registry knows who we are but does not allow the operation (403)."""


class RegistryNotFound(RegistryError):
    """No such repository, tag, manifest or blob (404), or no manifest for the platform."""


class RegistryRateLimited(RegistryError):
    """A registry kept answering 429 Too Many Requests."""


class RegistryServerError(RegistryError):
    """A registry kept failing with 5xx errors."""


class RegistryBadContent(RegistryError):
    """A registry sent content that does not match what was asked for (digest, size, format)."""


class RuntimeFailure(MinidockError):
    """A container could not be created, started, or stopped."""


class PrivilegeError(MinidockError):
    """The machine or the user lacks a capability that is needed."""


class NetworkError(MinidockError):
    """A network, a container's endpoint on it or a published port cannot be set up."""


class NetworkNotFound(NetworkError):
    """No network matches the name or ID."""


class PortInUse(NetworkError):
    """A host port asked for with ``-p`` is already taken (the message names ``IP:PORT/PROTO``)."""


class SubnetExhausted(NetworkError):
    """Every address of a network's subnet is leased (the message names the subnet)."""
