"""The tiny model builder never deletes what VoiceLab did not make (issue 15 item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicelab.errors import ModelError
from voicelab.tinymodel import MARKER, _check_replaceable, build_tiny_model


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
