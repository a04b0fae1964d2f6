"""The OCI distribution client: pull and push images, list tags, log in.

Modules, leaves first:

- ``transport``: HTTP/1.1 of its own over ``socket`` (``ssl`` only for HTTPS; ``http.client``
  would cost every command ~30 ms of imports) with keep-alive pooling per host (the
  ``Transport`` seam tests replace).
- ``failures``: the one place where HTTP statuses and ``OSError``/protocol failures become
  ``RegistryError`` subclasses whose messages name the registry and reference and say what to do.
- ``hosts``: which URL a reference lives at (Docker Hub naming), mirrors, plain-HTTP policy.
- ``policy``: ``RetryPolicy`` (backoff with jitter, ``Retry-After``) and ``RegistryOptions``
  (timeouts, parallelism, upload chunk size; ``MINIDOCK_REGISTRY_TIMEOUT``).
- ``auth``: ``WWW-Authenticate`` challenges, bearer tokens and basic auth; ``Credentials`` and the
  ``CredentialSource`` seam.
- ``dockerconfig``: ``~/.docker/config.json`` (``auths``, ``credsStore``, ``credHelpers``) as docker
  reads and writes it.
- ``session``: requests to one registry: auth, redirects (credentials never leave the host),
  retries and error mapping.
- ``client``: ``RegistryClient`` (the facade the ``Engine`` holds) and ``Repository`` (the
  distribution API calls on one repository).
- ``platforms``: platform strings and manifest-list selection.
- ``progress``: ``Progress`` events (docker's words) for the CLI's per-layer display.
- ``parallel``: blob transfers on a few threads, the first failure cancelling the rest.
- ``pull`` and ``push``: the two transfers, both resumable (downloads with ``Range``, chunked
  uploads from the offset the upload session reports).

Nothing here is imported by ``import pytest_minidock``: the ``Engine`` imports it on first use.
"""
