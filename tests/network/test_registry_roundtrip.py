"""Images travel both ways through the real registry (Debian's ``docker-registry``): push, rmi,
pull and run; skopeo reads what we push and we pull what skopeo pushes; manifest lists with
attestations; tags; cross-repository mounts; chunked uploads; the CLI."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.api import Engine
from pytest_minidock.cli import main
from pytest_minidock.digest import Digest
from pytest_minidock.errors import RegistryNotFound
from pytest_minidock.image import mediatypes as mt
from pytest_minidock.image.model import Descriptor, Index, Platform
from pytest_minidock.image.validate import validate_image
from pytest_minidock.reference import Reference
from pytest_minidock.registry.policy import RegistryOptions
from pytest_minidock.registry.progress import Progress
from pytest_minidock.registry.transport import StdlibTransport
from pytest_minidock.runtime.logs import read_logs
from pytest_minidock.spec import Overrides
from tests.conftest import make_busybox_root, require_tool

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.registry import RegistryServer

pytestmark = pytest.mark.network


@pytest.fixture
def engine(tmp_path: Path, busybox_rootfs: Path) -> Engine:
    """An engine whose store holds ``busybox:latest``."""
    return Engine(make_busybox_root(tmp_path / "root", busybox_rootfs))


def fresh(tmp_path: Path, name: str = "fresh") -> Engine:
    return Engine(tmp_path / name)


def push(engine: Engine, ref: str, events: list[Progress] | None = None) -> object:
    engine.store.tag("busybox", Reference.parse(ref))
    return engine.push(ref, progress=None if events is None else events.append)


def test_push_then_pull_into_another_store_is_the_same_image(
    engine: Engine, registry: RegistryServer, tmp_path: Path
) -> None:
    ref = registry.ref("tools/busybox:1")
    original = engine.store.resolve("busybox")
    pushed = push(engine, ref)
    assert pushed.digest == original.manifest.digest  # type: ignore[attr-defined]
    assert (pushed.pushed, pushed.existed) == (2, 0)  # type: ignore[attr-defined]
    other = fresh(tmp_path)
    events: list[Progress] = []
    result = other.pull(ref, progress=events.append)
    assert result.digest == original.manifest.digest
    assert result.id == original.id
    assert result.downloaded == 2
    assert not result.up_to_date
    assert result.reference == Reference.parse(ref)
    assert other.store.check() == []
    assert validate_image(other.store.image(ref), what=ref) == []
    layer = original.diff_ids and engine.store.image("busybox").manifest().layers[0]
    assert isinstance(layer, Descriptor)
    short = layer.digest.hex[:12]
    actions = [e.action for e in events if e.id == short]
    assert actions[0] == "Pulling fs layer"
    assert actions[-3:] == ["Verifying Checksum", "Download complete", "Pull complete"]
    assert events[0] == Progress("1", "Pulling from", detail=f"{registry.host}/tools/busybox")
    again = other.pull(ref)
    assert again.up_to_date
    assert again.downloaded == 0


@pytest.mark.privileged
def test_push_rmi_pull_run_round_trip(
    engine: Engine, registry: RegistryServer, tmp_path: Path
) -> None:
    ref = registry.ref("tools/busybox:rt")
    push(engine, ref)
    engine.remove_image(ref)
    engine.remove_image("busybox")
    assert engine.store.images() == []
    assert list(engine.store.blobs) == []
    pulled = engine.pull(ref)
    assert engine.store.check() == []
    started = engine.run(ref, Overrides(command=("sh", "-c", "echo round trip from $(hostname)")))
    try:
        assert engine.wait(started.id, timeout=30) == 0
        records = read_logs(engine.container(started.id).dir / "log")
        out = b"".join(r.data for r in records if r.stream == "stdout").decode()
        assert out.startswith("round trip from ")
        assert engine.container(started.id).config["ImageID"] == str(pulled.id)
    finally:
        engine.remove(started.id, force=True)


def test_skopeo_reads_what_we_push(
    engine: Engine, registry: RegistryServer, tmp_path: Path
) -> None:
    skopeo = require_tool("skopeo")
    ref = registry.ref("tools/busybox:for-skopeo")
    pushed = push(engine, ref)
    record = engine.store.resolve("busybox")
    inspected = json.loads(
        subprocess.run(
            [skopeo, "inspect", "--tls-verify=false", f"docker://{ref}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert inspected["Digest"] == str(pushed.digest)  # type: ignore[attr-defined]
    manifest = engine.store.image("busybox").manifest()
    assert inspected["Layers"] == [str(d.digest) for d in manifest.layers]
    assert inspected["Architecture"] == "amd64"
    layout = tmp_path / "skopeo-oci"
    subprocess.run(
        [skopeo, "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:copy"],
        check=True,
        capture_output=True,
    )
    index = Index.from_json((layout / "index.json").read_bytes())
    (entry,) = index.manifests
    assert entry.digest == record.manifest.digest  # copied byte for byte, not converted
    for desc in (manifest.config, *manifest.layers):
        copied = (layout / "blobs" / "sha256" / desc.digest.hex).read_bytes()
        assert copied == engine.store.blobs.read(desc.digest, verify=False)


def test_we_pull_what_skopeo_pushes(
    engine: Engine, registry: RegistryServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    skopeo = require_tool("skopeo")
    archive = tmp_path / "busybox-docker-archive.tar"
    assert main(["--root", str(engine.root), "save", "-o", str(archive), "busybox"]) == 0
    capsys.readouterr()
    ref = registry.ref("from-skopeo/busybox:2")
    subprocess.run(
        [skopeo, "copy", "--dest-tls-verify=false", f"docker-archive:{archive}", f"docker://{ref}"],
        check=True,
        capture_output=True,
    )
    other = fresh(tmp_path)
    result = other.pull(ref)
    assert result.record.manifest.media_type == mt.DOCKER_MANIFEST  # skopeo wrote schema 2
    assert result.id == engine.store.resolve("busybox").id  # the same config, so the same ID
    manifest = other.store.image(ref).manifest()
    assert {d.media_type for d in manifest.layers} == {mt.DOCKER_LAYER_GZIP}
    assert other.store.check() == []
    assert validate_image(other.store.image(ref), what=ref) == []


def put_manifest(registry: RegistryServer, repo: str, ref: str, raw: bytes, media: str) -> None:
    request = urllib.request.Request(
        registry.url(f"/v2/{repo}/manifests/{ref}"),
        data=raw,
        method="PUT",
        headers={"Content-Type": media},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201


def test_an_index_with_an_attestation_yields_the_platform_s_image(
    engine: Engine, registry: RegistryServer, tmp_path: Path
) -> None:
    amd = engine.store.resolve("busybox")
    image = engine.store.image("busybox")
    arm_config = replace(image.config(), architecture="arm64", variant="v8")
    arm = engine.store.commit_layers(arm_config, list(image.manifest().layers))
    engine.store.tag(str(arm.id), Reference.parse(registry.ref("tools/multi:arm64")))
    engine.push(registry.ref("tools/multi:arm64"))
    push(engine, registry.ref("tools/multi:amd64"))
    arm_record = engine.store.resolve(registry.ref("tools/multi:arm64"))
    index = Index(
        manifests=(
            replace(arm_record.manifest, annotations={}, platform=Platform("linux", "arm64", "v8")),
            replace(
                arm_record.manifest,
                annotations={
                    "vnd.docker.reference.type": "attestation-manifest",
                    "vnd.docker.reference.digest": str(amd.manifest.digest),
                },
                platform=Platform("unknown", "unknown"),
            ),
            replace(amd.manifest, annotations={}, platform=Platform("linux", "amd64")),
        ),
        media_type=mt.OCI_INDEX,
    )
    raw = index.to_json()
    put_manifest(registry, "tools/multi", "latest", raw, mt.OCI_INDEX)
    other = fresh(tmp_path)
    result = other.pull(registry.ref("tools/multi"))
    assert result.id == amd.id
    assert result.index_digest == Digest.from_bytes(raw)
    arm_pull = other.pull(registry.ref("tools/multi:latest"), platform="linux/arm64")
    assert arm_pull.id == arm.id
    with pytest.raises(RegistryNotFound, match="no manifest for linux/ppc64le"):
        other.pull(registry.ref("tools/multi:latest"), platform="linux/ppc64le")
    by_digest = other.pull(f"{registry.ref('tools/multi')}@{result.index_digest}")
    assert by_digest.id == amd.id
    assert (
        other.ensure_image(f"{registry.ref('tools/multi')}@{result.index_digest}", "never")
        == by_digest.record
    )
    # the store finds it by that name too (what create and run look images up with)
    by_name = other.store.resolve(f"{registry.ref('tools/multi')}@{result.index_digest}")
    assert by_name.id == amd.id


def test_tags_are_listed(engine: Engine, registry: RegistryServer) -> None:
    for tag in ("2", "1", "latest"):
        push(engine, registry.ref(f"tools/tagged:{tag}"))
    assert sorted(engine.list_tags(registry.ref("tools/tagged"))) == ["1", "2", "latest"]
    with pytest.raises(RegistryNotFound, match="not found on"):
        engine.list_tags(registry.ref("tools/never-pushed"))


def test_second_push_skips_existing_blobs_and_other_repos_mount_them(
    engine: Engine, registry: RegistryServer
) -> None:
    push(engine, registry.ref("tools/busybox:1"))
    again = push(engine, registry.ref("tools/busybox:2"))
    assert (again.pushed, again.existed, again.mounted) == (0, 2, 0)  # type: ignore[attr-defined]
    events: list[Progress] = []
    mounted = push(engine, registry.ref("elsewhere/busybox:1"), events)
    assert (mounted.pushed, mounted.mounted) == (0, 2)  # type: ignore[attr-defined]
    assert any(e.action == "Mounted from" and e.detail == "tools/busybox" for e in events)


def test_chunked_uploads(engine: Engine, registry: RegistryServer, tmp_path: Path) -> None:
    engine.registry_options = RegistryOptions(chunk_size=256 * 1024)
    events: list[Progress] = []
    ref = registry.ref("tools/chunked:1")
    push(engine, ref, events)
    layer = engine.store.image("busybox").manifest().layers[0]
    pushing = [e.current for e in events if e.action == "Pushing"]
    assert len(pushing) >= layer.size // (256 * 1024) + 1
    assert pushing == sorted(pushing)
    assert pushing[-1] == layer.size
    other = fresh(tmp_path)
    assert other.pull(ref).id == engine.store.resolve("busybox").id
    assert other.store.check() == []


def test_connections_are_kept_alive(engine: Engine, registry: RegistryServer) -> None:
    for n in range(3):
        push(engine, registry.ref(f"tools/keepalive:{n}"))
    transport = engine.registry.transport
    assert isinstance(transport, StdlibTransport)
    # the HTTPS probe, then at most one connection per parallel upload, reused by all pushes
    assert transport.connections_made <= 1 + engine.registry.options.upload_workers


def test_the_cli_pushes_and_pulls(
    engine: Engine,
    registry: RegistryServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ref = registry.ref("cli/busybox:7")
    root = str(engine.root)
    assert main(["--root", root, "tag", "busybox", ref]) == 0
    assert main(["--root", root, "push", ref]) == 0
    out = capsys.readouterr().out.splitlines()
    digest = engine.store.resolve(ref).manifest.digest
    assert out[0] == f"The push refers to repository [{registry.host}/cli/busybox]"
    assert out[-1] == f"7: digest: {digest} size: {engine.store.resolve(ref).manifest.size}"
    assert any(line.endswith(": Pushed") for line in out)
    other = str(tmp_path / "cli-other")
    assert main(["--root", other, "pull", registry.ref("cli/busybox")]) == 1
    assert "not found on" in capsys.readouterr().err  # :latest was never pushed
    assert main(["--root", other, "pull", ref]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"7: Pulling from {registry.host}/cli/busybox"
    assert out[-3:] == [
        f"Digest: {digest}",
        f"Status: Downloaded newer image for {ref}",
        ref,
    ]
    assert main(["--root", other, "pull", "-q", ref]) == 0
    assert capsys.readouterr().out == f"{ref}\n"


@pytest.mark.privileged
def test_run_pulls_a_missing_image(
    engine: Engine,
    registry: RegistryServer,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    ref = registry.ref("tools/busybox:run")
    push(engine, ref)
    root = str(tmp_path / "run-root")
    assert main(["--root", root, "run", "--rm", "--pull", "never", ref, "true"]) == 125
    assert "the pull policy is 'never'" in capfd.readouterr().err
    assert main(["--root", root, "run", "--rm", ref, "echo", "pulled on demand"]) == 0
    out, err = capfd.readouterr()
    assert out == "pulled on demand\n"
    assert err.startswith(f"Unable to find image '{ref}' locally\n")
    assert f"Status: Downloaded newer image for {ref}" in err
    assert main(["--root", root, "run", "--rm", ref, "true"]) == 0
    assert capfd.readouterr().err == ""  # there now: no pull
    assert main(["--root", root, "run", "--rm", "--pull", "always", ref, "true"]) == 0
    assert f"Status: Image is up to date for {ref}" in capfd.readouterr().err


def test_pull_draws_per_layer_progress_on_a_terminal(
    engine: Engine, registry: RegistryServer, tmp_path: Path
) -> None:
    import os
    import pty
    import sys

    ref = registry.ref("tty/busybox:1")
    push(engine, ref)
    (layer,) = engine.store.image("busybox").manifest().layers
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest_minidock", "--root", str(tmp_path / "tty"), "pull", ref],
            stdin=subprocess.DEVNULL,
            stdout=secondary,
            stderr=subprocess.PIPE,
        )
        os.close(secondary)
        output = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        os.close(primary)
        if proc.stderr is not None:
            proc.stderr.close()
    text = output.decode()
    short = layer.digest.hex[:12]
    assert text.startswith(f"1: Pulling from {registry.host}/tty/busybox")
    assert f"{short}: Pulling fs layer" in text
    assert "\x1b[1A\r\x1b[2K" in text  # the layer's line is redrawn in place
    assert f"{short}: Pull complete" in text
    assert f"Status: Downloaded newer image for {ref}" in text


def test_a_cli_pull_from_a_loopback_registry_loads_no_tls(
    engine: Engine, registry: RegistryServer, tmp_path: Path
) -> None:
    import sys

    ref = registry.ref("light/busybox:1")
    push(engine, ref)
    code = (
        "import sys\n"
        "from pytest_minidock.cli import main\n"
        f"assert main(['--root', {str(tmp_path / 'light')!r}, 'pull', '-q', {ref!r}]) == 0\n"
        "print(sorted(m for m in ('ssl', 'http.client', 'email.parser', 'concurrent.futures')\n"
        "             if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [ref, "[]"]
