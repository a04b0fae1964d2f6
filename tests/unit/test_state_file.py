"""The container state on disk: the two-slot ``state`` file and spare container directories.

No root needed: these are plain files and directories under ``tmp_path``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.errors import RuntimeFailure
from pytest_minidock.runtime import state as st
from pytest_minidock.runtime.state import SPARE_DIRS, SPARE_FILES, ContainerState, StateDir

if TYPE_CHECKING:
    from pathlib import Path

CID = "c" * 64


@pytest.fixture
def states(tmp_path: Path) -> StateDir:
    sd = StateDir(tmp_path / "root")
    sd.dir(CID).mkdir()
    return sd


def test_the_state_is_written_in_place_in_alternate_slots(states: StateDir) -> None:
    path = states.dir(CID) / "state"
    states.write_state(CID, ContainerState(status="created"))
    inode = path.stat().st_ino
    for code in range(5):
        states.write_state(CID, ContainerState(status="exited", exit_code=code))
        assert states.read_state(CID).exit_code == code
    assert path.stat().st_ino == inode  # never replaced: it is also the container's lock
    raw = path.read_bytes()
    assert [st._unframe(raw[i * st._SLOT : (i + 1) * st._SLOT]) is not None for i in (0, 1)] == [
        True,
        True,
    ]
    assert states.update(CID, status="running").status == "running"
    assert path.stat().st_ino == inode


def test_a_torn_slot_is_ignored_and_the_other_one_read(states: StateDir) -> None:
    states.write_state(CID, ContainerState(status="running", pid=1))
    states.write_state(CID, ContainerState(status="exited", exit_code=3))
    path = states.dir(CID) / "state"
    index, _, _ = st._latest(path.read_bytes()) or (0, 0, b"")
    with open(path, "r+b") as f:  # a crash (or a reader's race) midway through that slot
        f.seek(index * st._SLOT + st._HEAD + 5)
        f.write(b"#####")
    state = states.read_state(CID)
    assert (state.status, state.pid) == ("running", 1)  # the previous state, intact
    states.write_state(CID, ContainerState(status="exited", exit_code=4))  # over the torn one
    assert states.read_state(CID).exit_code == 4


def test_no_valid_slot_is_a_corrupt_state(states: StateDir) -> None:
    (states.dir(CID) / "state").write_bytes(b"x" * 100)
    with pytest.raises(RuntimeFailure, match="state is corrupt"):
        states.read_state(CID)
    with pytest.raises(RuntimeFailure, match="no such container"):
        states.read_state("d" * 64)


def test_an_older_state_json_is_read_then_replaced(states: StateDir) -> None:
    d = states.dir(CID)
    (d / "state.json").write_bytes(ContainerState(status="exited", exit_code=7).to_json())
    assert states.read_state(CID).exit_code == 7
    assert states.update(CID, exit_code=8).exit_code == 8
    assert not (d / "state.json").exists()
    assert states.read_state(CID).exit_code == 8


def test_a_very_long_error_is_cut_to_fit_a_slot(states: StateDir) -> None:
    states.write_state(CID, ContainerState(status="dead", error="é" * 10_000))
    error = states.read_state(CID).error
    assert error.startswith("é" * 500)
    assert error.endswith("...")
    assert len(error) < 600


def _writer(root: str, rounds: int) -> None:
    from pathlib import Path

    sd = StateDir(Path(root))
    for i in range(rounds):
        with sd.locked(CID):
            sd.write_state(CID, ContainerState(status="running", exit_code=i, error="e" * (i % 97)))


def test_readers_never_see_a_half_written_state(states: StateDir) -> None:
    states.write_state(CID, ContainerState(status="running"))
    ctx = multiprocessing.get_context("fork")
    writer = ctx.Process(target=_writer, args=(str(states.root), 3000))
    writer.start()
    try:
        last = -1
        while writer.is_alive() or last < 0:
            code = states.read_state(CID).exit_code
            assert code >= last  # complete and in order
            last = code
    finally:
        writer.join()
    assert writer.exitcode == 0
    assert states.read_state(CID).exit_code == 2999


# -- spares ----------------------------------------------------------------------------------------


def test_a_spare_directory_becomes_a_container_directory(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "root")
    assert not sd.take_spare(CID)  # none yet
    tag = f"{os.getpid()}-{st.process_start_time(os.getpid())}"
    sd.make_spare(tag)
    sd.make_spare(tag)
    assert sd.spare_count(tag) == 2
    assert sd.spare_count("1-2") == 0
    assert sd.take_spare(CID)
    d = sd.dir(CID)
    assert sorted(p.name for p in d.iterdir()) == sorted((*SPARE_DIRS, *SPARE_FILES))
    assert all((d / f).stat().st_size == 0 for f in SPARE_FILES)
    sd.write_state(CID, ContainerState(status="created"))  # into the spare's empty state file
    assert sd.read_state(CID).status == "created"
    assert sd.spare_count(tag) == 1
    sd.remove_spares(tag)
    assert sd.spare_count(tag) == 0
    assert os.listdir(sd.spares) == []


def test_spares_of_makers_that_are_gone_are_removed(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "root")
    me = f"{os.getpid()}-{st.process_start_time(os.getpid())}"
    ctx = multiprocessing.get_context("fork")
    gone = ctx.Process(target=lambda: None)
    gone.start()
    gone.join()
    dead = f"{gone.pid}-12345"
    sd.make_spare(me)
    sd.make_spare(dead)
    (sd.spares / f".{dead}-half").mkdir()  # half made when its maker died
    (sd.spares / "junk").mkdir()
    (sd.workroom(dead) / "z1234").mkdir()  # a staged directory of one of its zygotes
    sd.remove_spares()
    assert sorted(os.listdir(sd.spares)) == sorted(
        n for n in os.listdir(sd.spares) if n.removeprefix(".").startswith(me)
    )
    assert f".{me}-work" in os.listdir(sd.spares)  # (where it makes them: its own)
    assert sd.spare_count(me) == 1
    assert sd.spare_count(dead) == 0


def test_the_state_file_is_json_in_each_slot(states: StateDir) -> None:
    states.write_state(CID, ContainerState(status="running", pid=42))
    raw = (states.dir(CID) / "state").read_bytes()
    found = st._latest(raw)
    assert found is not None
    assert json.loads(found[2])["pid"] == 42
