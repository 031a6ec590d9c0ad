"""The fixed evaluation set: composition, seeding, storage and reuse; the zero-shot prompt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voicelab.blocks.kaldi import write_kaldi_dir
from voicelab.blocks.records import Utt
from voicelab.errors import WorkspaceError
from voicelab.evaluation import sets
from voicelab.workspace import Workspace


def _split(ws: Workspace, split: str, durations: list[float], tmp: Path) -> None:
    utts = []
    for i, d in enumerate(durations):
        wav = tmp / f"{split}_{i}.wav"
        sf.write(wav, np.zeros(int(d * 16000), np.float32), 16000)
        utts.append(Utt(f"spk1_{split}_{i:02d}", wav, f"line number {i}", "spk1"))
    write_kaldi_dir(ws.split_dir(split), utts)


def test_set_composition_storage_and_reuse(tmp_workspace: Workspace, tmp_path: Path) -> None:
    ws = tmp_workspace
    _split(ws, "dev", [2.0] * 30, tmp_path)
    lines = sets.load_set(ws, lines=20, seed=1)
    assert len(lines) == 20
    dev = [x for x in lines if x.source == "dev"]
    fixed = [x for x in lines if x.source == "fixed"]
    assert len(dev) == 12 and len(fixed) == len(sets.FIXED_IDS) == 8  # half dev, fixed, dev fills
    assert all(x.ref_wav and x.ref_seconds == pytest.approx(2.0) for x in dev)
    assert {x.lang for x in fixed} == {"zh", "en"}
    stored = json.loads((sets.eval_root(ws) / sets.SET_FILE).read_text(encoding="utf-8"))
    assert [x["id"] for x in stored["lines"]] == [x.id for x in lines]
    # Other arguments reuse the stored set (scores stay comparable) unless a new one is asked.
    assert [x.id for x in sets.load_set(ws, lines=5, seed=2)] == [x.id for x in lines]
    new = sets.load_set(ws, lines=6, seed=2, new=True)
    assert len(new) == 6 and sum(x.source == "dev" for x in new) == 3
    # The same seed draws the same lines.
    assert [x.id for x in sets.build_set(ws, 6, seed=2)] == [x.id for x in new]
    only_dev = sets.build_set(ws, 4, seed=0, fixed=False)
    assert [x.source for x in only_dev] == ["dev"] * 4


def test_set_without_dev_and_prompt_clip(tmp_workspace: Workspace, tmp_path: Path) -> None:
    ws = tmp_workspace
    assert [x.source for x in sets.build_set(ws, 3)] == ["fixed"] * 3
    with pytest.raises(WorkspaceError):
        sets.build_set(ws, 3, fixed=False)
    with pytest.raises(WorkspaceError):
        sets.prompt_clip(ws)
    _split(ws, "train", [1.0, 20.0, 4.0, 7.0], tmp_path)
    wav, text = sets.prompt_clip(ws)
    assert Path(wav).name == "train_3.wav" and text == "line number 3"  # 7 s: nearest to 6 s
    assert len(sets.train_clips(ws, n=2)) == 2


def test_missing_scoring_package_fails_before_synthesis(
    tmp_workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing package is reported at once, with the extra to install (sys.modules entry set
    to None is how Python itself marks a module as unimportable)."""
    import sys

    from voicelab.errors import EnvironmentProblem
    from voicelab.evaluation.run import EvalOptions, run_eval

    monkeypatch.setitem(sys.modules, "jiwer", None)
    with pytest.raises(EnvironmentProblem, match="needs jiwer") as e:
        run_eval(tmp_workspace, EvalOptions())
    assert "voicelab[eval]" in e.value.one_line()
