"""`voicelab say` and `voicelab audition` with upstream's CosyVoice3 on the tiny random model.

Needs the vendor checkout and the train extra (skipped otherwise, see conftest.py). The tiny model
is built once into the test cache; a voice dir is made from it with a spk2info.pt as
`voicelab export` writes it ({spk: {'embedding': float32 (1, 192)}}).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.vendor

CACHE = Path(os.environ.get("VOICELAB_TEST_CACHE", Path(__file__).resolve().parents[1] / ".cache"))
SPK = "spk1"
# The random tiny LLM speaks until its length limit, 20 tokens per text token (instruct
# included): the bare marker as instruct and short texts keep each take at a few seconds.
BARE = "<|endofprompt|>"


@pytest.fixture(scope="session")
def voice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from voicelab.fsutil import link_or_copy
    from voicelab.upstream.tinymodel import build_tiny_model

    tiny = build_tiny_model(CACHE / "tiny-cosyvoice3-synth")
    voice = tmp_path_factory.mktemp("voice") / "Fun-CosyVoice3-0.5B-spk1-sft"
    for src in tiny.rglob("*"):
        if src.is_file():
            link_or_copy(src, voice / src.relative_to(tiny))
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 192, generator=gen, dtype=torch.float32)
    torch.save({SPK: {"embedding": emb}, "other": {"embedding": -emb}}, voice / "spk2info.pt")
    return voice


@pytest.fixture(scope="session")
def synth(voice_dir: Path):
    from voicelab.stages.synth import Synthesizer

    # As if left over from training (upstream's variable is lower case).
    os.environ["onnx_path"] = str(voice_dir / "no-such-dir")  # noqa: SIM112
    root_level = logging.getLogger().level
    s = Synthesizer(voice_dir, speaker=SPK)
    assert "onnx_path" not in os.environ  # popped before upstream was imported
    assert logging.getLogger().level == root_level  # upstream's basicConfig(DEBUG) undone
    return s


def test_importing_upstream_prints_no_debug_lines() -> None:
    """Upstream's ``basicConfig(level=DEBUG)`` at import must not put what libraries log while
    the import runs (transformers imports torchao, which logs at DEBUG) on a user's console."""
    code = (
        "from voicelab.upstream.inference_fixes import import_cosyvoice3\n"
        "import logging\n"
        "import_cosyvoice3()\n"
        "logging.getLogger('probe').debug('after the import')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
    )
    debug = [x for x in proc.stderr.splitlines() if " DEBUG " in x]
    assert not debug, debug


def _check_wav(path: Path, min_seconds: float = 0.5) -> np.ndarray:
    info = sf.info(path)
    assert info.samplerate == 24000 and info.channels == 1
    audio, _ = sf.read(path, dtype="float32")
    assert len(audio) / 24000 >= min_seconds
    assert np.abs(audio).max() > 0
    return audio


def test_say_zh_and_en(synth, tmp_path: Path) -> None:
    from voicelab.blocks.tts_text import plan_utterance

    for text in ("你好，3点见。", "Hi, at 3 pm."):
        utt = plan_utterance(text, BARE)
        spoken = synth.speak(utt, seed=3)
        assert spoken.sample_rate == 24000 and spoken.seconds > 0.5 and spoken.rtf > 0
    # Same seed, same audio.
    utt = plan_utterance("Hi.", BARE)
    a, b = synth.speak(utt, seed=7), synth.speak(utt, seed=7)
    assert np.array_equal(a.audio, b.audio)


def test_llm_ckpt_and_bad_ckpt(synth, voice_dir: Path, tmp_path: Path) -> None:
    import torch

    from voicelab.blocks.tts_text import plan_utterance
    from voicelab.errors import ModelError
    from voicelab.stages.synth import Weights

    state = torch.load(voice_dir / "llm.pt", map_location="cpu", weights_only=True)
    ckpt = tmp_path / "epoch_3_whole.pt"
    torch.save({**state, "epoch": 3, "step": 10}, ckpt)  # as upstream's train.py saves
    synth.use_weights(Weights(llm=ckpt, label="epoch 3"))
    utt = plan_utterance("你好。", BARE)
    spoken = synth.speak(utt, seed=1)
    assert spoken.seconds > 0.5
    # A checkpoint of another shape: refused before anything is copied into the model.
    bad_state = {k: torch.zeros_like(v) for k, v in state.items()}
    first = next(iter(bad_state))
    bad_state[first] = torch.zeros(3)
    bad = tmp_path / "bad.pt"
    torch.save({**bad_state, "epoch": 1, "step": 1}, bad)
    with pytest.raises(ModelError, match="does not fit"):
        synth.use_weights(Weights(llm=bad))
    assert np.array_equal(synth.speak(utt, seed=1).audio, spoken.audio)
    synth.use_weights(Weights())  # back to the voice's own llm.pt


def test_say_command(voice_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole command, as a user runs it: two lines, --llm-ckpt, --join, and --stream."""
    import torch
    from click.testing import CliRunner

    from voicelab.cli.main import cli

    monkeypatch.setenv("VOICELAB_WORKSPACE", str(tmp_path / "no-workspace"))
    state = torch.load(voice_dir / "llm.pt", map_location="cpu", weights_only=True)
    ckpt = tmp_path / "epoch_2_whole.pt"
    torch.save({**state, "epoch": 2, "step": 4}, ckpt)
    text_file = tmp_path / "lines.txt"
    text_file.write_text("你好。\nHi.\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["say", "--text-file", str(text_file), "--model-dir", str(voice_dir), "--out", str(out)]
    args += ["--llm-ckpt", str(ckpt), "--join", "--pause", "0.2", "--seed", "5"]
    args += ["--speaker", SPK, "--prompt-text", ""]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    wavs = sorted(out.glob("0*.wav"))
    assert [w.name[:4] for w in wavs] == ["001-", "002-"]
    parts = [_check_wav(w) for w in wavs]
    joined = _check_wav(out / "joined.wav")
    assert len(joined) == sum(len(p) for p in parts) + int(0.2 * 24000)
    assert "RTF" in res.output and "epoch_2_whole.pt" in res.output


def test_stream(synth, tmp_path: Path) -> None:
    """--stream: the file grows chunk by chunk; each chunk is flushed as it arrives."""
    from voicelab.blocks.tts_text import plan_utterance
    from voicelab.stages.synth import StreamingWav

    out = tmp_path / "stream.wav"
    writer = StreamingWav(out, synth.sample_rate)
    sizes: list[int] = []

    def on_chunk(chunk: np.ndarray) -> None:
        writer.write(chunk)
        sizes.append(sf.info(out).frames)  # readable, with the audio so far

    try:
        spoken = synth.speak(plan_utterance("你好，今天见。", BARE), stream=True, on_chunk=on_chunk)
    finally:
        writer.close()
    assert len(sizes) >= 2 and sizes == sorted(sizes)  # more than one chunk, growing
    assert spoken.first_audio is not None and spoken.first_audio < spoken.wall
    assert len(_check_wav(out)) == len(spoken.audio)


def test_say_bad_speaker(voice_dir: Path, tmp_path: Path) -> None:
    from voicelab.errors import ModelError
    from voicelab.stages.synth import SayOptions, run_say

    with pytest.raises(ModelError) as e:
        run_say(
            None, ["你好"], SayOptions(out=tmp_path / "x.wav", model_dir=voice_dir, speaker="x")
        )
    assert "available: other, spk1" in e.value.one_line()


class _Audio(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.src: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "audio":
            self.src.append(str(dict(attrs)["src"]))


def test_audition_compare(voice_dir: Path, tmp_path: Path) -> None:
    from voicelab.stages.audition import AuditionOptions, run_audition
    from voicelab.workspace import Workspace

    # A workspace whose voice was trained with the bare marker: neutral = that instruct, and
    # the workspace's speaker is the default one.
    ws = Workspace.init(tmp_path / "ws", SPK, options={"prepare": {"instruct": BARE}})
    sentences = tmp_path / "s.txt"
    sentences.write_text("zh\t好。\nen\tHi.\n", encoding="utf-8")
    opts = AuditionOptions(sentences=sentences, compare=True, model_dir=voice_dir, seed=1)
    res = run_audition(ws, opts)
    assert res.report_dir.parent == ws.reports_dir
    assert res.report_dir.name.startswith("audition-")
    assert res.takes == 8 and len(res.variants) == 4
    parser = _Audio()
    parser.feed(res.index.read_text(encoding="utf-8"))
    assert len(parser.src) == 8
    for sid in ("zh", "en"):
        takes = [s for s in parser.src if s.startswith(f"audio/{sid}__")]
        assert len(takes) == 4
        lens = {t: len(_check_wav(res.report_dir / t, 0.3)) for t in takes}
        # speed 1.1 makes the same tokens shorter (same seed, same instruct)
        assert lens[f"audio/{sid}__neutral-1.1.wav"] < lens[f"audio/{sid}__neutral-1.0.wav"]
    shutil.rmtree(res.report_dir)


@pytest.mark.gpu
def test_say_fp16_on_cuda(voice_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`say --fp16` (and `--stream --fp16`) on a CUDA GPU; skipped without one.

    Set VOICELAB_TEST_OUT=DIR to keep the wavs and the printed summaries.
    """
    import torch
    from click.testing import CliRunner

    from voicelab.cli.main import cli

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.setenv("VOICELAB_WORKSPACE", str(tmp_path / "no-workspace"))
    keep = os.environ.get("VOICELAB_TEST_OUT")
    out = Path(keep) if keep else tmp_path / "out"
    base = ["say", "--model-dir", str(voice_dir), "--speaker", SPK, "--fp16", "--seed", "1"]
    runs = {
        "fp16": [*base, "你好，这是一个推理测试。\nHello, this is a GPU test.", "--out", str(out)],
        "fp16-stream": [*base, "Streaming on the GPU.", "--stream", "--out", str(out / "s.wav")],
    }
    for name, args in runs.items():
        res = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert "on cuda" in res.output, res.output
        if keep:
            (out / f"{name}.txt").write_text(res.output, encoding="utf-8")
    wavs = sorted(out.glob("*.wav"))
    assert len(wavs) == 3
    for w in wavs:
        _check_wav(w)
