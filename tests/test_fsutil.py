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


# ---- issue 15 items 8 and 24 ----------------------------------------------------------------


def test_jsonl_cache_survives_a_torn_last_line(tmp_path: Path) -> None:
    from voicelab.stages.prepare import JsonlCache

    path = tmp_path / "cache.jsonl"
    c = JsonlCache(path)
    c.put({"k": "a", "v": 1})
    c.put({"k": "b", "v": 2})
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"k": "c", "v"')  # killed mid-write
    c = JsonlCache(path)
    assert set(c.items) == {"a", "b"}
    c.put({"k": "d", "v": 4})
    assert set(JsonlCache(path).items) == {"a", "b", "d"}  # d was not glued to the torn line
    assert path.read_text(encoding="utf-8").endswith('"v": 4}\n')


def test_atomic_path_syncs_before_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The order of the real system calls: the temp file's data must be on disk before the rename
    # makes it the final file (spying on os, not replacing what it does).
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync:" + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(a, b) -> None:  # type: ignore[no-untyped-def]
        calls.append("replace")
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_text(tmp_path / "out.txt", "data")
    assert "replace" in calls
    before = calls[: calls.index("replace")]
    temp = [c for c in before if c.startswith("fsync:") and "/.out.txt." in c]
    assert temp and temp[0] != f"fsync:{tmp_path / 'out.txt'}", calls


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_respect_the_umask(tmp_path: Path, umask: int) -> None:
    from voicelab.fsutil import make_temp_dir

    old = os.umask(umask)
    try:
        f = atomic_write_text(tmp_path / f"f{umask}.txt", "x")
        d = make_temp_dir(tmp_path, prefix="stage-")
    finally:
        os.umask(old)
    assert f.stat().st_mode & 0o777 == 0o666 & ~umask
    assert d.stat().st_mode & 0o777 == 0o777 & ~umask


def test_torch_save_is_byte_reproducible(tmp_path: Path) -> None:
    # Issue 15 item 15: torch.save names the zip's folder after the file it writes; a random
    # temp name made every .pt differ although the tensors were the same.
    torch = pytest.importorskip("torch")
    from voicelab.stages.features.build import _save_pt

    obj = {"spk": [0.5] * 192, "utt": torch.arange(10)}
    a = _save_pt(obj, tmp_path / "a" / "spk2embedding.pt").read_bytes()
    b = _save_pt(obj, tmp_path / "b" / "spk2embedding.pt").read_bytes()
    assert a == b
    assert b"spk2embedding/data.pkl" in a  # named after the final file, as torch.save(path)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["spk2embedding.pt"]
