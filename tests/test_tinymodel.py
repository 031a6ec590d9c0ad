"""The tiny model builder never deletes what VoiceLab did not make (issue 15 item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicelab.errors import ModelError
from voicelab.upstream.tinymodel import MARKER, _check_replaceable, build_tiny_model


def test_a_users_model_dir_is_never_replaced(tmp_path: Path) -> None:
    # base_dir pointing at the real model while [run] tiny is set: the 5 GB download must stay.
    real = tmp_path / "Fun-CosyVoice3-0.5B"
    real.mkdir()
    (real / "llm.pt").write_bytes(b"user's weights")
    with pytest.raises(ModelError, match="did not make"):
        build_tiny_model(real)
    assert (real / "llm.pt").read_bytes() == b"user's weights"
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(ModelError, match="left alone"):
        build_tiny_model(a_file)
    assert a_file.read_bytes() == b"x"


def test_own_or_empty_dirs_may_be_replaced(tmp_path: Path) -> None:
    ours = tmp_path / "tiny"
    ours.mkdir()
    (ours / MARKER).write_text("{}")
    (ours / "llm.pt").write_bytes(b"old tiny weights")
    _check_replaceable(ours)
    empty = tmp_path / "empty"
    empty.mkdir()
    _check_replaceable(empty)
    _check_replaceable(tmp_path / "missing")


# ---- issue 15 item 13: doctor and models check the tiny model against its own manifest -------


def _fake_tiny(d: Path) -> None:
    """Files of the tiny model's layout (small real files) with the marker build_tiny_model
    writes, so the check runs without the vendor."""
    from voicelab.fsutil import atomic_write_json
    from voicelab.upstream.tinymodel import REQUIRED_FILES, _files

    for i, rel in enumerate(REQUIRED_FILES):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(bytes([i % 256]) * (100 + i))
    atomic_write_json(d / MARKER, {"key": {}, "files": _files(d)})


def _check_tiny_workspace(ws_root: Path, base: Path) -> None:
    from voicelab.doctor import check_model
    from voicelab.models import list_models, verify_model_dir
    from voicelab.workspace import Workspace

    ws = Workspace.init(ws_root, "demo", options={"model": {"base_dir": str(base)}})
    assert verify_model_dir(base).ok
    c = check_model(ws)
    assert c.status == "pass", (c.detail, c.fix)
    [info] = [i for i in list_models(ws, caches=False) if i.path == base]
    assert info.complete is True, info.detail
    # A damaged tiny model is rebuilt, not replaced by a 5 GB download.
    llm = base / "llm.pt"
    llm.write_bytes(llm.read_bytes()[:-1])
    c = check_model(ws)
    assert c.status == "fail" and "download" not in (c.fix or "") and "--tiny" in (c.fix or "")


def test_tiny_model_checked_against_its_own_manifest(tmp_path: Path) -> None:
    base = tmp_path / "ws" / "pretrained_models" / "CosyVoice3-tiny-random"
    _fake_tiny(base)
    _check_tiny_workspace(tmp_path / "ws", base)


@pytest.mark.vendor
def test_built_tiny_model_passes_doctor_and_models(tmp_path: Path) -> None:
    base = build_tiny_model(tmp_path / "ws" / "pretrained_models" / "CosyVoice3-tiny-random")
    _check_tiny_workspace(tmp_path / "ws", base)
