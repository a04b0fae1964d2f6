"""Pure pieces of resumable transfers: an upload session's ``Range`` header, and whether a
response to ``Range: bytes=N-`` really continues at N."""

from __future__ import annotations

import pytest

from pytest_minidock.registry.client import _upload_offset
from pytest_minidock.registry.pull import _resumes


@pytest.mark.parametrize(
    ("header", "offset"),
    [
        ("0-1048575", 1 << 20),
        ("bytes=0-99", 100),
        ("0-0", 0),  # distribution's answer for an empty session
        (" 0-9 ", 10),
        (None, None),
        ("", None),
        ("5-9", None),  # sessions always start at 0
        ("0-", None),
        ("junk", None),
    ],
)
def test_upload_offsets(header: str | None, offset: int | None) -> None:
    assert _upload_offset(header) == offset


class _Answer:
    def __init__(self, status: int, content_range: str | None) -> None:
        self.status = status
        self.reason = ""
        self._range = content_range

    def header(self, name: str) -> str | None:
        return self._range if name == "Content-Range" else None

    def read(self, amt: int | None = None) -> bytes:
        return b""

    def read1(self, amt: int) -> bytes:
        return b""

    def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("status", "content_range", "resumes"),
    [
        (206, "bytes 100-199/200", True),
        (206, "bytes 100-199/*", True),
        (206, "bytes 0-199/200", False),  # from the start after all
        (206, "bytes 50-199/200", False),
        (206, None, False),
        (200, None, False),  # Range ignored: the whole blob again
    ],
)
def test_a_resumed_download_must_continue_where_it_stopped(
    status: int, content_range: str | None, resumes: bool
) -> None:
    assert _resumes(_Answer(status, content_range), 100) is resumes
