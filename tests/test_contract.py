"""The stage contract (issue 14 item 2): one resolution rule, each stage module's STAGE."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicelab.contract import RunOptions, StageResult, resolve
from voicelab.runner.pipeline import default_stages, run_stage
from voicelab.stages import train
from voicelab.stages.features import stage as features_stage
from voicelab.stages.pack import stage as pack_stage
from voicelab.stages.train import stage as train_stage
from voicelab.vendor import handle as vendor_runtime
from voicelab.vendor import stage as vendor_stage
from voicelab.workspace import Workspace


def test_defaults_then_toml_then_flags(tmp_workspace: Workspace) -> None:
    ws = tmp_workspace
    assert resolve(ws, train.TrainOptions, "train", RunOptions()).keep is None
    ws.set_option("train", "keep", 3)
    ws.set_option("train", "epochs", 4)
    got = resolve(ws, train.TrainOptions, "train", RunOptions())
    assert (got.keep, got.epochs) == (3, 4)
    flagged = resolve(ws, train.TrainOptions, "train", RunOptions(overrides={"train": {"keep": 1}}))
    assert (flagged.keep, flagged.epochs) == (1, 4)
    # Options of one run only are never read from the file.
    ws.config.sections["train"]["resume"] = True
    assert resolve(ws, train.TrainOptions, "train", RunOptions()).resume is False


def test_flow_falls_back_to_train_and_pack_to_train(tmp_workspace: Workspace) -> None:
    ws = tmp_workspace
    ws.set_option("train", "keep", 2)
    ws.set_option("train", "gpus", 2)
    ws.set_option("train_flow", "epochs", 7)
    flow = train_stage.stage_options(ws, RunOptions(), model="flow")
    assert (flow.keep, flow.epochs, flow.resume, flow.new) == (2, 7, False, False)
    assert train_stage.stage_options(ws, RunOptions()).epochs is None  # llm: [train] only
    p = pack_stage.stage_options(ws, RunOptions())
    assert p.num_gpus == 2 and pack_stage.stage_params(ws, p)["gpus"] == 2
    p = pack_stage.stage_options(ws, RunOptions(overrides={"pack": {"gpus": 1}}))
    assert p.num_gpus == 1


def test_params_keep_their_recorded_names(tmp_workspace: Workspace) -> None:
    """What a stage records for skip/redo keeps 0.1's names and values (no retrain on update)."""
    ws = tmp_workspace
    params = train_stage.stage_params(ws, train_stage.stage_options(ws, RunOptions()))
    assert params["engine"] is None and params["device"] == "auto"
    assert set(params) == {*train_stage.PARAM_KEYS, "device"}
    f = features_stage.stage_options(ws, RunOptions(device="cpu"))
    assert f.device == "cpu"
    assert features_stage.stage_params(ws, f) == {"onnx_dir": str(ws.base_model_dir)}


def test_every_default_stage_declares_the_contract() -> None:
    names = [s.name for s in default_stages()]
    for st in default_stages():
        assert all(names.index(d) < names.index(st.name) for d in st.inputs)
        assert st.summary and callable(st.run) and callable(st.options)


def test_vendor_outputs_name_the_expected_checkout(
    tmp_path: Path, tmp_workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No checkout: the stage is stale on the path voicelab vendor sync would create."""
    where = tmp_path / "no-checkout"
    monkeypatch.setenv(vendor_runtime.COSYVOICE_DIR_ENV, str(where))
    assert vendor_stage.stage_outputs(tmp_workspace, RunOptions()) == [
        where / "cosyvoice" / "bin" / "train.py"
    ]
    monkeypatch.delenv(vendor_runtime.COSYVOICE_DIR_ENV)
    expected = vendor_runtime.cosyvoice_expected_dir()
    assert expected.name == "CosyVoice" and "nonexistent" not in str(expected)


def test_run_stage_records_a_stage_result(tmp_workspace: Workspace) -> None:
    from voicelab.contract import Stage
    from voicelab.state import load_record

    out = tmp_workspace.root / "x.txt"

    def run(ws: Workspace, opts: RunOptions) -> StageResult:
        out.write_text("x")
        return StageResult([out], {"n": 2}, "one line")

    done = run_stage(tmp_workspace, Stage("x", (), lambda ws, o: {"k": 1}, run), RunOptions())
    rec = load_record(tmp_workspace, "x")
    assert done.summary == "one line" and rec is not None
    assert rec.status == "done" and rec.figures == {"n": 2} and rec.options == {"k": 1}
