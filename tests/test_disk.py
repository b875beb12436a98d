"""How ctai writes a file (whole, in pieces of at most ``WRITE_PIECE`` bytes) and makes it durable."""

from __future__ import annotations

import errno
import io

from ctai import disk
from ctai.disk import WRITE_PIECE, write_in_pieces


class Recording(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, data) -> int:  # type: ignore[override]
        self.sizes.append(len(data))
        return super().write(data)


def test_data_is_written_whole_in_pieces():
    data = bytes(range(256)) * (WRITE_PIECE * 5 // 512) + b"tail"  # 2.5 pieces and a few bytes
    file = Recording()
    write_in_pieces(file, data)
    assert file.getvalue() == data
    assert file.sizes == [WRITE_PIECE, WRITE_PIECE, len(data) - 2 * WRITE_PIECE]


def test_nothing_is_written_for_no_data():
    file = Recording()
    write_in_pieces(file, b"")
    assert file.sizes == []


def test_advice_the_system_refuses_does_not_fail_a_sync(tmp_path, monkeypatch):
    path = tmp_path / "file"
    path.write_bytes(b"x")

    def refuse(*args: object) -> None:
        raise OSError(errno.ESPIPE, "Illegal seek")

    monkeypatch.setattr(disk.os, "posix_fadvise", refuse)
    disk.fsync_path(path, uncache=True)
