"""Interrupted transfers against the real registry (Debian's ``docker-registry``), with faults
injected by a wrapping transport (``tests.network.faults``):

- a download whose connection breaks half-way goes on with ``Range: bytes=N-`` (the registry
  answers 206) and the blob is verified whole at the end;
- a chunked upload whose ``PATCH`` fails asks the upload session where it is (``GET`` on its
  location: ``204`` with ``Range: 0-LAST``) and continues from there, in the same session;
- when the session is gone or inconsistent (distribution cancels a session whose state token no
  longer matches what it received), a new session starts from 0;
- when only the answer to the closing ``PUT`` was lost, the blob is found there (``HEAD``) and
  not sent again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_minidock.api import Engine
from pytest_minidock.reference import Reference
from pytest_minidock.registry.policy import RegistryOptions, RetryPolicy
from tests.conftest import make_busybox_root
from tests.network.faults import Fault, FaultyTransport

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_minidock.image.model import Descriptor
    from tests.support.registry import RegistryServer

pytestmark = pytest.mark.network

CHUNK = 256 * 1024
UPLOADS = "/blobs/uploads/"


def engine_with(root: Path, *faults: Fault, chunk: int = CHUNK) -> tuple[Engine, FaultyTransport]:
    transport = FaultyTransport(list(faults))
    engine = Engine(root)
    engine.registry_transport = transport
    engine.registry_options = RegistryOptions(
        timeout=10, chunk_size=chunk, retry=RetryPolicy(attempts=4, backoff=0.01)
    )
    return engine, transport


@pytest.fixture
def source_root(tmp_path: Path, busybox_rootfs: Path) -> Path:
    return make_busybox_root(tmp_path / "root", busybox_rootfs)


def busybox_layer(engine: Engine) -> Descriptor:
    (layer,) = engine.store.image("busybox").manifest().layers
    return layer


def push(engine: Engine, ref: str) -> None:
    engine.store.tag("busybox", Reference.parse(ref))
    engine.push(ref)


def assert_pulls_back_intact(engine: Engine, ref: str, tmp_path: Path) -> None:
    other = Engine(tmp_path / "pulled")
    assert other.pull(ref).id == engine.store.resolve("busybox").id
    assert other.store.check() == []


def test_a_download_cut_half_way_is_resumed_with_a_range_request(
    source_root: Path, registry: RegistryServer, tmp_path: Path
) -> None:
    pusher = Engine(source_root)
    ref = registry.ref("resume/download:1")
    push(pusher, ref)
    layer = busybox_layer(pusher)
    half = layer.size // 2
    puller, transport = engine_with(
        tmp_path / "pull-root", Fault("GET", str(layer.digest), "cut", cut_after=half)
    )
    result = puller.pull(ref)
    assert result.id == pusher.store.resolve("busybox").id
    first, second = transport.requests("GET", str(layer.digest))
    assert "Range" not in first.headers
    assert second.headers["Range"] == f"bytes={half}-"
    assert second.status == 206
    assert second.content_range == f"bytes {half}-{layer.size - 1}/{layer.size}"
    assert puller.store.check() == []
    assert list(puller.store.paths.tmp.iterdir()) == []


def test_a_chunk_that_never_arrived_is_sent_again_in_the_same_session(
    source_root: Path, registry: RegistryServer, tmp_path: Path
) -> None:
    engine, transport = engine_with(source_root, Fault("PATCH", UPLOADS, "before", nth=2))
    layer = busybox_layer(engine)
    assert layer.size > 3 * CHUNK
    ref = registry.ref("resume/upload:1")
    push(engine, ref)
    assert len(transport.requests("POST", UPLOADS)) == 2  # the config's and the layer's: no more
    (status,) = transport.requests("GET", UPLOADS)
    assert status.status == 204
    patches = transport.requests("PATCH", UPLOADS)
    ranges = [p.headers["Content-Range"] for p in patches]
    assert ranges[1] == ranges[2] == f"{CHUNK}-{2 * CHUNK - 1}"  # failed, then resumed there
    received = sum(p.length for p in patches if p.status == 202)
    assert received == layer.size  # every byte sent once
    assert_pulls_back_intact(engine, ref, tmp_path)


def test_an_inconsistent_session_is_abandoned_for_a_new_one(
    source_root: Path, registry: RegistryServer, tmp_path: Path
) -> None:
    # the registry got chunk 2 but the client never learnt it: the old location's state token
    # says one chunk, the session holds two, and distribution cancels such a session
    engine, transport = engine_with(source_root, Fault("PATCH", UPLOADS, "after", nth=2))
    ref = registry.ref("resume/restart:1")
    push(engine, ref)
    (status,) = transport.requests("GET", UPLOADS)
    assert status.status != 204
    assert len(transport.requests("POST", UPLOADS)) == 3  # the layer's upload started again
    assert_pulls_back_intact(engine, ref, tmp_path)


def test_a_lost_answer_to_the_closing_put_does_not_send_the_blob_again(
    source_root: Path, registry: RegistryServer, tmp_path: Path
) -> None:
    engine, transport = engine_with(source_root, Fault("PUT", UPLOADS, "after"), chunk=64 << 20)
    ref = registry.ref("resume/closing:1")
    push(engine, ref)
    assert len(transport.requests("PUT", UPLOADS)) == 2  # one per blob: none sent twice
    assert len(transport.requests("POST", UPLOADS)) == 2
    (status,) = transport.requests("GET", UPLOADS)
    assert status.status == 404  # the session ended with the upload
    assert_pulls_back_intact(engine, ref, tmp_path)
