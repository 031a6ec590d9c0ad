import os
from pathlib import Path

import pytest

from voicelab.fsutil import atomic_path, atomic_write_text, link_or_copy


def test_atomic_write_leaves_no_temp(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_failed_write_keeps_old_content(tmp_path: Path) -> None:
    dest = tmp_path / "a.wav"
    dest.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        assert tmp.suffix == ".wav"
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert dest.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_link_or_copy_links(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"123")
    assert link_or_copy(src, tmp_path / "d" / "x.bin") == "link"
    assert os.stat(src).st_ino == os.stat(tmp_path / "d" / "x.bin").st_ino
