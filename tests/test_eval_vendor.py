"""`voicelab eval` end to end on the tiny CosyVoice 3 model (CPU): two epochs, the base model
zero-shot and the real recordings; then `voicelab export --llm-select best-eval`.

Scored with real models: Whisper base (registry), the tiny model's campplus stand-in (real ONNX
Runtime), DNSMOS (speechmos). The tiny model's speech is noise, so the test checks the
machinery (table, per-line files, audio, resume, report, choice), not the voice.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

pytestmark = pytest.mark.vendor
pytest.importorskip("speechmos", reason="the eval extra is not installed: pip install '.[eval]'")

from speech_corpus import tiny_model_dir  # noqa: E402
from test_export_vendor import _fake_run  # noqa: E402
from voicelab.blocks.kaldi import write_kaldi_dir  # noqa: E402
from voicelab.blocks.records import Utt  # noqa: E402
from voicelab.workspace import Workspace  # noqa: E402

BARE = "<|endofprompt|>"  # keeps the random tiny LLM's takes short (see test_synth_vendor)
TRAIN = ["Good morning.", "Thank you.", "See you soon."]
DEV = ["Hello there.", "Yes please."]


def _clip(text: str, path: Path) -> Path:
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en+m3", "-w", str(raw), text], check=True)
    audio, sr = sf.read(raw, dtype="float32")
    import soxr

    sf.write(path, soxr.resample(audio, sr, 24000), 24000)
    raw.unlink()
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from voicelab.upstream.tinymodel import build_tiny_model
    from voicelab.vendor import cosyvoice_runtime

    base = build_tiny_model(tiny_model_dir(), cosyvoice_runtime())
    root = tmp_path_factory.mktemp("evalws")
    ws = Workspace.init(root / "ws", "spk1")
    ws.set_option("model", "base_dir", str(base))
    ws.set_option("prepare", "instruct", BARE)
    ws.save()
    clips = root / "clips"
    clips.mkdir()
    for split, texts in (("train", TRAIN), ("dev", DEV)):
        utts = [
            Utt(f"spk1_{split}_{i}", _clip(t, clips / f"{split}_{i}.wav"), t, "spk1")
            for i, t in enumerate(texts)
        ]
        write_kaldi_dir(ws.split_dir(split), utts)
    emb = torch.randn(192, generator=torch.Generator().manual_seed(3)).tolist()
    torch.save({"spk1": emb}, ws.split_dir("train") / "spk2embedding.pt")
    _fake_run(ws, base / "llm.pt")
    return ws


def test_eval_two_epochs_and_baselines_then_export_best(ws: Workspace) -> None:
    from voicelab.cli.main import cli
    from voicelab.evaluation.choose import best
    from voicelab.evaluation.results import read_table
    from voicelab.testing.whisper import whisper_base_dir

    args = ["-w", str(ws.root), "eval", "--lines", "2", "--no-fixed", "--device", "cpu",
            "--asr-model", str(whisper_base_dir()), "--no-funasr", "--run", "t1"]  # fmt: skip
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = ws.root / "eval" / "t1"
    rows = {x["candidate"]: x for x in read_table(run / "metrics.tsv")}
    assert set(rows) == {"epoch_0", "epoch_1", "base", "real"}
    assert rows["epoch_1"]["kind"] == "epoch" and rows["epoch_1"]["epoch"] == 1
    for name, row in rows.items():
        assert row["lines"] == 2, name
        assert row["err"] is not None and row["err"] >= 0, name
        assert row["sim"] is not None and -1 <= row["sim"] <= 1, name
        assert row["mos"] is not None and 1 <= row["mos"] <= 5, name
        wavs = sorted((run / name / "audio").glob("*.wav"))
        assert len(wavs) == 2, name
        audio, _ = sf.read(wavs[0], dtype="float32")
        assert len(audio) > 0 and np.isfinite(audio).all()
        line = json.loads(next((run / name / "lines").glob("*.json")).read_text("utf-8"))
        assert {"text", "transcript", "err", "sim", "mos"} <= set(line)
    # The real recordings are the dev clips: Whisper reads espeak well, and each real take
    # is compared with itself for sim_ref.
    assert rows["real"]["err"] < 0.5 and rows["real"]["sim_ref"] == pytest.approx(1.0, abs=1e-4)
    assert rows["real"]["dur_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert rows["epoch_0"]["rtf"] is not None and rows["real"]["rtf"] is None
    assert "best (rule best-eval)" in r.output and "report:" in r.output
    # The report has the section, with plots and players.
    page = (ws.reports_dir / "index.html").read_text(encoding="utf-8")
    assert "<h2>Evaluation</h2>" in page and "<svg" in page and "eval/t1/" in page

    # Resuming the same run redoes nothing: the per-line files stay as they are.
    stamp = {p: p.stat().st_mtime_ns for p in run.rglob("lines/*.json")}
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert {p: p.stat().st_mtime_ns for p in run.rglob("lines/*.json")} == stamp
    assert "synthesized in" not in r.output

    # export --llm-select best-eval exports what the rule chose.
    base = rows["base"]
    chosen = [x["epoch"] for x in best([rows["epoch_0"], rows["epoch_1"]], base)]
    r = CliRunner().invoke(
        cli, ["-w", str(ws.root), "export", "--llm-select", "best-eval"], catch_exceptions=False
    )
    if chosen:
        assert r.exit_code == 0, r.output
        prov = json.loads((ws.voice_dir / "voicelab.json").read_text(encoding="utf-8"))
        files = [c["file"] for c in prov["llm"]["checkpoints"]]
        assert files == [f"epoch_{chosen[0]}_whole.pt"]
    else:  # random weights may all be worse than the base model: then export refuses
        assert r.exit_code != 0


def test_a_candidate_that_cannot_speak_scores_as_silence(ws: Workspace) -> None:
    """A diverged checkpoint (NaN weights: upstream's sampling raises) is a bad candidate, not
    a failed evaluation: its takes are written as silence, marked failed, and score error 1."""
    from voicelab.cli.main import cli
    from voicelab.evaluation.results import read_table
    from voicelab.testing.whisper import whisper_base_dir

    good = torch.load(ws.exp_dir("llm") / "epoch_0_whole.pt", weights_only=True)
    bad = {k: v for k, v in good.items() if k not in ("epoch", "step")}
    bad["llm_decoder.weight"] = torch.full_like(bad["llm_decoder.weight"], float("nan"))
    path = ws.root / "diverged.pt"
    torch.save(bad, path)
    args = ["-w", str(ws.root), "eval", "--checkpoints", str(path), "--no-fixed",
            "--no-baselines", "--device", "cpu", "--asr-model", str(whisper_base_dir()),
            "--no-funasr", "--run", "t2"]  # fmt: skip
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = ws.root / "eval" / "t2"
    (row,) = [x for x in read_table(run / "metrics.tsv") if x["kind"] != "real"]
    # The workspace's evaluation set is fixed by the first run (every candidate speaks the same
    # lines), so --lines does not shrink it here.
    assert row["lines"] >= 1 and row["err"] == 1.0 and row["sim"] is None
    lines = sorted((run / row["candidate"] / "lines").glob("*.json"))
    assert len(lines) == row["lines"]
    for f in lines:
        line = json.loads(f.read_text("utf-8"))
        assert line["failed"].startswith("RuntimeError") and line["seconds"] == 0
