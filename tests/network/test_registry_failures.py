"""Bad registries, each a small scripted HTTP server on 127.0.0.1: wrong digests, truncated and
short blobs, 401/403/404/429/5xx, redirects to another host, dead and stalling connections.

Every failure must be a ``RegistryError`` naming the registry and the reference, and must leave
nothing behind: no name in the store, no temp file, no unverified blob.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.digest import Digest
from pytest_minidock.errors import (
    RegistryAuthError,
    RegistryBadContent,
    RegistryDenied,
    RegistryError,
    RegistryNotFound,
    RegistryRateLimited,
    RegistryServerError,
    RegistryUnreachable,
)
from pytest_minidock.reference import Reference
from pytest_minidock.registry.auth import Credentials
from pytest_minidock.registry.client import RegistryClient
from pytest_minidock.registry.hosts import RegistryHosts
from pytest_minidock.registry.policy import RegistryOptions, RetryPolicy
from pytest_minidock.store.store import Store
from tests.network.fake_registry import FakeRegistry, Reply, TinyImage, tiny_image
from tests.support.registry import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.network

REPO = "team/app"


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def image(fake: FakeRegistry) -> TinyImage:
    img = tiny_image()
    fake.serve_image(REPO, "1", img)
    return img


def make_client(
    sleeps: list[float],
    *,
    attempts: int = 3,
    timeout: float = 5.0,
    credentials: Credentials | None = None,
    hosts: RegistryHosts | None = None,
) -> RegistryClient:
    return RegistryClient(
        credentials=lambda registry: credentials,
        hosts=hosts or RegistryHosts({}, ()),
        options=RegistryOptions(
            timeout=timeout, retry=RetryPolicy(attempts=attempts, backoff=0.25, jitter=0.0)
        ),
        sleep=sleeps.append,
    )


def assert_nothing_left(store: Store, *blobs: str) -> None:
    assert store.images() == []
    assert list(store.paths.tmp.iterdir()) == []
    for blob in blobs:
        assert not store.blobs.exists(Digest.parse(blob))


def pull(client: RegistryClient, store: Store, text: str) -> object:
    return client.pull(store, Reference.parse(text))


def test_the_fake_serves_a_good_image(fake: FakeRegistry, image: TinyImage, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    client = make_client([])
    result = client.pull(store, Reference.parse(f"{fake.host}/{REPO}:1"))
    assert str(result.digest) == image.digest
    assert store.check() == []
    client.close()


def test_a_layer_with_the_wrong_digest(
    fake: FakeRegistry, image: TinyImage, tmp_path: Path
) -> None:
    corrupt = bytearray(image.layer)
    corrupt[len(corrupt) // 2] ^= 0x55
    fake.add("GET", f"/v2/{REPO}/blobs/{image.layer_digest}", Reply(body=bytes(corrupt)))
    store = Store(tmp_path / "store")
    sleeps: list[float] = []
    with pytest.raises(RegistryBadContent) as info:
        pull(make_client(sleeps), store, f"{fake.host}/{REPO}:1")
    text = str(info.value)
    assert f"cannot download layer {image.layer_digest} of {fake.host}/{REPO}:1" in text
    assert f"not {image.layer_digest}" in text
    assert "nothing was stored" in text
    assert sleeps == []  # a wrong digest is not retried
    assert_nothing_left(store, image.layer_digest)


def test_a_manifest_whose_digest_header_lies(
    fake: FakeRegistry, image: TinyImage, tmp_path: Path
) -> None:
    other = tiny_image(b"other\n")
    fake.add(
        "GET",
        f"/v2/{REPO}/manifests/2",
        Reply(
            body=other.manifest,
            headers={"Content-Type": other.media_type, "Docker-Content-Digest": image.digest},
        ),
    )
    store = Store(tmp_path / "store")
    with pytest.raises(RegistryBadContent, match=f"hashes to {other.digest}, not {image.digest}"):
        pull(make_client([]), store, f"{fake.host}/{REPO}:2")
    assert_nothing_left(store, image.config_digest, image.layer_digest)


def test_a_truncated_blob_is_resumed_with_a_range_request(
    fake: FakeRegistry, image: TinyImage, tmp_path: Path
) -> None:
    half = len(image.layer) // 2
    path = f"/v2/{REPO}/blobs/{image.layer_digest}"
    fake.add("GET", path, Reply(body=image.layer, send=half), Reply(body=image.layer))
    store = Store(tmp_path / "store")
    sleeps: list[float] = []
    result = pull(make_client(sleeps), store, f"{fake.host}/{REPO}:1")
    first, second = fake.requests("GET", path)
    assert "Range" not in first.headers
    assert second.headers["Range"] == f"bytes={half}-"
    assert sleeps == [0.25]
    assert store.check() == []
    assert result is not None


def test_a_registry_without_range_support_is_read_again_from_the_start(
    fake: FakeRegistry, image: TinyImage, tmp_path: Path
) -> None:
    path = f"/v2/{REPO}/blobs/{image.layer_digest}"
    fake.add(
        "GET",
        path,
        Reply(body=image.layer, send=len(image.layer) - 3, ranges=False),
        Reply(body=image.layer, ranges=False),
    )
    store = Store(tmp_path / "store")
    pull(make_client([]), store, f"{fake.host}/{REPO}:1")
    assert len(fake.requests("GET", path)) == 2
    assert store.check() == []


def test_a_blob_that_always_breaks_fails_after_the_retries(
    fake: FakeRegistry, image: TinyImage, tmp_path: Path
) -> None:
    path = f"/v2/{REPO}/blobs/{image.layer_digest}"
    fake.add("GET", path, Reply(body=image.layer, send=0))
    store = Store(tmp_path / "store")
    sleeps: list[float] = []
    with pytest.raises(RegistryUnreachable) as info:
        pull(make_client(sleeps, attempts=3), store, f"{fake.host}/{REPO}:1")
    assert "the connection to" in str(info.value)
    assert f"broke after 0 of {len(image.layer)} bytes (3 attempts)" in str(info.value)
    assert len(fake.requests("GET", path)) == 3
    assert sleeps == [0.25, 0.5]
    assert_nothing_left(store, image.layer_digest)


def test_a_blob_shorter_than_its_descriptor(
    fake: FakeRegistry, image: TinyImage, tmp_path: Path
) -> None:
    fake.add("GET", f"/v2/{REPO}/blobs/{image.layer_digest}", Reply(body=image.layer[:-10]))
    store = Store(tmp_path / "store")
    with pytest.raises(RegistryBadContent) as info:
        pull(make_client([]), store, f"{fake.host}/{REPO}:1")
    expected = f"sent {len(image.layer) - 10} bytes where the manifest says {len(image.layer)}"
    assert expected in str(info.value)
    assert_nothing_left(store, image.layer_digest)


def test_a_blob_longer_than_its_descriptor(
    fake: FakeRegistry, image: TinyImage, tmp_path: Path
) -> None:
    fake.add("GET", f"/v2/{REPO}/blobs/{image.layer_digest}", Reply(body=image.layer + b"x" * 4096))
    store = Store(tmp_path / "store")
    with pytest.raises(RegistryBadContent, match="sent more than"):
        pull(make_client([]), store, f"{fake.host}/{REPO}:1")
    assert_nothing_left(store, image.layer_digest)


ERROR_BODY = b'{"errors":[{"code":"%s","message":"%s"}]}'


@pytest.mark.parametrize(
    ("status", "code", "kind", "words"),
    [
        (401, "UNAUTHORIZED", RegistryAuthError, "requires authentication"),
        (403, "DENIED", RegistryDenied, "denied access"),
        (404, "MANIFEST_UNKNOWN", RegistryNotFound, "not found on"),
        (500, "UNKNOWN", RegistryServerError, "after 3 attempts"),
        (429, "TOOMANYREQUESTS", RegistryRateLimited, "rate-limiting"),
    ],
)
def test_error_statuses(
    fake: FakeRegistry,
    tmp_path: Path,
    *,
    status: int,
    code: str,
    kind: type[RegistryError],
    words: str,
) -> None:
    fake.add(
        "GET",
        f"/v2/{REPO}/manifests/1",
        Reply(status, ERROR_BODY % (code.encode(), b"told you so")),
    )
    store = Store(tmp_path / "store")
    sleeps: list[float] = []
    with pytest.raises(kind) as info:
        pull(make_client(sleeps), store, f"{fake.host}/{REPO}:1")
    text = str(info.value)
    assert text.startswith(f"cannot pull manifest of {fake.host}/{REPO}:1: ")
    assert fake.host in text.split(": ", 1)[1]
    assert f"{code}: told you so" in text
    assert words in text
    retried = status >= 429
    assert len(fake.requests("GET", f"/v2/{REPO}/manifests/1")) == (3 if retried else 1)
    assert sleeps == ([0.25, 0.5] if retried else [])
    assert store.images() == []


def test_429_is_retried_as_retry_after_asks(
    fake: FakeRegistry, image: TinyImage, tmp_path: Path
) -> None:
    path = f"/v2/{REPO}/manifests/1"
    good = fake.routes[("GET", path)][0]
    fake.add(
        "GET",
        path,
        Reply(429, headers={"Retry-After": "1"}),
        Reply(429, headers={"Retry-After": "2"}),
        good,
    )
    store = Store(tmp_path / "store")
    sleeps: list[float] = []
    pull(make_client(sleeps), store, f"{fake.host}/{REPO}:1")
    assert sleeps == [1.0, 2.0]
    assert store.check() == []


def test_5xx_is_retried_with_backoff(fake: FakeRegistry, image: TinyImage, tmp_path: Path) -> None:
    path = f"/v2/{REPO}/blobs/{image.layer_digest}"
    fake.add("GET", path, Reply(503), Reply(502), Reply(body=image.layer))
    store = Store(tmp_path / "store")
    sleeps: list[float] = []
    pull(make_client(sleeps), store, f"{fake.host}/{REPO}:1")
    assert sleeps == [0.25, 0.5]
    assert len(fake.requests("GET", path)) == 3


def test_redirects_to_blob_storage_never_carry_credentials(
    fake: FakeRegistry, image: TinyImage, tmp_path: Path
) -> None:
    storage = FakeRegistry()
    try:
        manifest = f"/v2/{REPO}/manifests/1"
        good = fake.routes[("GET", manifest)][0]
        fake.add("GET", manifest, Reply(401, headers={"WWW-Authenticate": 'Basic realm="r"'}), good)
        for name, data in (("config", image.config), ("layer", image.layer)):
            digest = image.config_digest if name == "config" else image.layer_digest
            fake.add(
                "GET",
                f"/v2/{REPO}/blobs/{digest}",
                Reply(307, headers={"Location": storage.url(f"/bucket/{name}?signature=s3cr3t")}),
            )
            storage.add("GET", f"/bucket/{name}", Reply(body=data))
        store = Store(tmp_path / "store")
        creds = Credentials("alice", "wonderland")
        pull(make_client([], credentials=creds), store, f"{fake.host}/{REPO}:1")
        assert store.check() == []
        registry_blob_requests = [s for s in fake.seen if "/blobs/" in s.path]
        assert len(registry_blob_requests) == 2
        assert all(s.headers["Authorization"] == creds.basic() for s in registry_blob_requests)
        assert len(storage.seen) == 2
        for seen in storage.seen:
            assert "Authorization" not in seen.headers
            assert "signature=s3cr3t" in seen.path
    finally:
        storage.stop()


def test_a_dead_server_times_out_after_the_retries(
    fake: FakeRegistry, image: TinyImage, tmp_path: Path
) -> None:
    fake.add("GET", f"/v2/{REPO}/manifests/1", Reply(delay=30))
    store = Store(tmp_path / "store")
    started = time.monotonic()
    with pytest.raises(RegistryUnreachable) as info:
        pull(make_client([], attempts=2, timeout=0.3), store, f"{fake.host}/{REPO}:1")
    assert time.monotonic() - started < 10
    assert "did not answer within 0.3s (2 attempts)" in str(info.value)
    assert "MINIDOCK_REGISTRY_TIMEOUT" in str(info.value)
    assert len(fake.requests("GET", f"/v2/{REPO}/manifests/1")) == 2


def test_a_stalled_download_is_resumed(
    fake: FakeRegistry, image: TinyImage, tmp_path: Path
) -> None:
    path = f"/v2/{REPO}/blobs/{image.layer_digest}"
    third = len(image.layer) // 3
    fake.add(
        "GET", path, Reply(body=image.layer, send=third, then="stall"), Reply(body=image.layer)
    )
    store = Store(tmp_path / "store")
    pull(make_client([], timeout=0.5), store, f"{fake.host}/{REPO}:1")
    assert fake.requests("GET", path)[1].headers["Range"] == f"bytes={third}-"
    assert store.check() == []


def test_nobody_listening(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"
    store = Store(tmp_path / "store")
    sleeps: list[float] = []
    with pytest.raises(RegistryUnreachable) as info:
        pull(make_client(sleeps, attempts=2), store, f"{host}/{REPO}:1")
    assert f"connection to {host} refused (2 attempts)" in str(info.value)
    assert "is the registry running" in str(info.value)
    assert sleeps == [0.25]


def test_a_failing_mirror_falls_back_to_the_registry(
    fake: FakeRegistry, image: TinyImage, tmp_path: Path
) -> None:
    mirror = FakeRegistry()
    try:
        mirror.add("GET", f"/v2/{REPO}/manifests/1", Reply(500))
        hosts = RegistryHosts({fake.host: (f"http://{mirror.host}",)}, ())
        store = Store(tmp_path / "store")
        result = make_client([], hosts=hosts, attempts=1).pull(
            store, Reference.parse(f"{fake.host}/{REPO}:1")
        )
        assert result.source == fake.host
        assert len(mirror.seen) == 1
    finally:
        mirror.stop()


def test_a_working_mirror_is_used_instead_of_the_registry(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    mirror = FakeRegistry()
    try:
        mirror.serve_image(REPO, "1", tiny_image())
        hosts = RegistryHosts({fake.host: (f"http://{mirror.host}",)}, ())
        store = Store(tmp_path / "store")
        result = make_client([], hosts=hosts).pull(store, Reference.parse(f"{fake.host}/{REPO}:1"))
        assert result.source == mirror.host
        assert fake.seen == []
        assert result.reference == Reference.parse(f"{fake.host}/{REPO}:1")
    finally:
        mirror.stop()


@pytest.fixture
def busybox_store(tmp_path: Path, busybox_rootfs: Path) -> Store:
    from tests.conftest import make_busybox_root

    return Store(make_busybox_root(tmp_path / "push-root", busybox_rootfs))


def accept_uploads(fake: FakeRegistry, repo: str, *put_replies: Reply) -> None:
    """Routes for uploads: POST starts one at ``/u1`` (mount or not), PUT closes it."""
    fake.add(
        "POST",
        f"/v2/{repo}/blobs/uploads/",
        Reply(202, headers={"Location": f"/v2/{repo}/blobs/uploads/u1?_state=abc"}),
    )
    fake.add("PUT", f"/v2/{repo}/blobs/uploads/u1", *(put_replies or (Reply(201),)))


def test_a_refused_mount_becomes_an_ordinary_upload(
    fake: FakeRegistry, busybox_store: Store
) -> None:
    source = Reference.parse(f"{fake.host}/other/app:1")
    target = Reference.parse(f"{fake.host}/{REPO}:1")
    busybox_store.tag("busybox", source)
    busybox_store.tag("busybox", target)
    record = busybox_store.resolve(str(target))
    accept_uploads(fake, REPO)
    fake.add(
        "PUT",
        f"/v2/{REPO}/manifests/1",
        Reply(201, headers={"Docker-Content-Digest": str(record.manifest.digest)}),
    )
    result = make_client([]).push(busybox_store, target)
    assert (result.pushed, result.mounted, result.existed) == (2, 0, 0)
    posts = fake.requests("POST", f"/v2/{REPO}/blobs/uploads/")
    assert len(posts) == 2
    assert all("mount=sha256" in p.path and "from=other%2Fapp" in p.path for p in posts)
    puts = fake.requests("PUT", f"/v2/{REPO}/blobs/uploads/u1")
    assert len(puts) == 2
    assert all("_state=abc&digest=sha256" in p.path for p in puts)
    (manifest_put,) = fake.requests("PUT", f"/v2/{REPO}/manifests/1")
    assert manifest_put.headers["Content-Type"] == record.manifest.media_type


def test_a_failed_upload_starts_again_in_a_new_session(
    fake: FakeRegistry, busybox_store: Store
) -> None:
    target = Reference.parse(f"{fake.host}/{REPO}:1")
    busybox_store.tag("busybox", target)
    accept_uploads(fake, REPO, Reply(500), Reply(201))
    fake.add("PUT", f"/v2/{REPO}/manifests/1", Reply(201))
    sleeps: list[float] = []
    client = make_client(sleeps)
    result = client.push(busybox_store, target)
    assert result.pushed == 2
    assert len(fake.requests("POST", f"/v2/{REPO}/blobs/uploads/")) == 3
    assert len(fake.requests("PUT", f"/v2/{REPO}/blobs/uploads/u1")) == 3
    assert sleeps == [0.25]


def test_a_push_that_keeps_failing_names_the_blob_and_the_reference(
    fake: FakeRegistry, busybox_store: Store
) -> None:
    target = Reference.parse(f"{fake.host}/{REPO}:1")
    busybox_store.tag("busybox", target)
    accept_uploads(fake, REPO, Reply(503))
    with pytest.raises(RegistryServerError) as info:
        make_client([], attempts=2).push(busybox_store, target)
    text = str(info.value)
    assert text.startswith("cannot push ")
    assert f" of {target}: {fake.host} failed (503" in text
    assert fake.requests("PUT", f"/v2/{REPO}/manifests/1") == []  # no tag without its blobs


def test_a_chunked_upload_goes_on_where_the_session_says(
    fake: FakeRegistry, busybox_store: Store
) -> None:
    # the second PATCH times out after the registry took it: the session's GET says two chunks
    # are there, so the third follows them, in the same session, from the location it gives
    chunk = 256 * 1024
    target = Reference.parse(f"{fake.host}/{REPO}:1")
    busybox_store.tag("busybox", target)
    (layer,) = busybox_store.image(str(target)).manifest().layers
    assert layer.size > 3 * chunk
    session = f"/v2/{REPO}/blobs/uploads/u1"
    accept_uploads(fake, REPO)
    fake.add(
        "PATCH",
        session,
        Reply(202, headers={"Location": f"{session}?s=1"}),
        Reply(202, headers={"Location": f"{session}?s=2"}, delay=5),
        Reply(202, headers={"Location": f"{session}?s=n"}),
    )
    fake.add(
        "GET", session, Reply(204, headers={"Range": f"0-{2 * chunk - 1}", "Location": "?s=2"})
    )
    fake.add("PUT", f"/v2/{REPO}/manifests/1", Reply(201))
    sleeps: list[float] = []
    client = RegistryClient(
        credentials=lambda registry: None,
        hosts=RegistryHosts({}, ()),
        options=RegistryOptions(
            timeout=0.5, chunk_size=chunk, retry=RetryPolicy(attempts=3, backoff=0.25, jitter=0)
        ),
        sleep=sleeps.append,
    )
    result = client.push(busybox_store, target)
    assert result.pushed == 2
    assert len(fake.requests("POST", f"/v2/{REPO}/blobs/uploads/")) == 2  # no new session
    patches = fake.requests("PATCH", session)
    starts = [int(p.headers["Content-Range"].split("-")[0]) for p in patches]
    assert starts == list(range(0, 2 * chunk, chunk)) + list(range(2 * chunk, layer.size, chunk))
    assert patches[2].path.endswith("?s=2")
    assert sleeps == [0.25]
    (status,) = fake.requests("GET", session)
    assert status.path == f"{session}?s=1"  # asked at the failed request's location


def test_a_download_from_blob_storage_resumes_there_without_credentials(
    fake: FakeRegistry, image: TinyImage, tmp_path: Path
) -> None:
    storage = FakeRegistry()
    try:
        path = f"/v2/{REPO}/blobs/{image.layer_digest}"
        fake.add("GET", path, Reply(307, headers={"Location": storage.url("/b/layer?sig=1")}))
        half = len(image.layer) // 2
        storage.add("GET", "/b/layer", Reply(body=image.layer, send=half), Reply(body=image.layer))
        manifest = f"/v2/{REPO}/manifests/1"
        good = fake.routes[("GET", manifest)][0]
        fake.add("GET", manifest, Reply(401, headers={"WWW-Authenticate": 'Basic realm="r"'}), good)
        store = Store(tmp_path / "store")
        creds = Credentials("alice", "wonderland")
        pull(make_client([], credentials=creds), store, f"{fake.host}/{REPO}:1")
        first, second = storage.requests("GET", "/b/layer")
        assert "Range" not in first.headers
        assert second.headers["Range"] == f"bytes={half}-"  # asked of the registry, kept
        assert all("Authorization" not in s.headers for s in storage.seen)
        assert [s.headers.get("Range") for s in fake.requests("GET", path)] == [
            None,
            f"bytes={half}-",
        ]
        assert store.check() == []
    finally:
        storage.stop()
