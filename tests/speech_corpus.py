"""The espeak-ng speech set shared by test_features and test_pack (fixtures in conftest)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from voicelab.workspace import Workspace

SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
]
VOICES = {"spkA": "en-us+m3", "spkB": "en+f3"}
LONG_UTT = "spkA_long"


def _espeak(text: str, voice: str, out: Path) -> None:
    subprocess.run(
        ["espeak-ng", "-v", voice, "-w", str(out), text], check=True, capture_output=True
    )


def build_speech_set(root: Path) -> dict[str, list[tuple[str, str, str, str]]]:
    """espeak-ng clips for two speakers: 24 kHz wavs (one kept at 44.1 kHz, one over 30 s).

    Returns ``{split: [(utt, wav, text, spk)]}``. Built once into ``root`` (a cache entry).
    """
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng sox)")
    import soundfile as sf
    import soxr

    manifest = root / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())
    final, root = root, Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    rows: dict[str, list[tuple[str, str, str, str]]] = {"train": [], "dev": []}
    clips: dict[str, list[np.ndarray]] = {}
    for si, (spk, voice) in enumerate(VOICES.items()):
        for i, text in enumerate(SENTENCES[:6] if si == 0 else SENTENCES[4:]):
            raw = root / f"raw_{spk}_{i}.wav"
            _espeak(text, voice, raw)
            x, sr = sf.read(raw, dtype="float32")
            raw.unlink()
            utt = f"{spk}_{i:03d}"
            split = "dev" if i == 5 else "train"
            rate = 44100 if (spk, i) == ("spkB", 1) else 24000  # any rate must work
            y = soxr.resample(x, sr, rate)
            wav = root / f"{utt}.wav"
            sf.write(wav, y, rate, subtype="PCM_16")
            clips.setdefault(spk, []).append(soxr.resample(x, sr, 24000))
            rows[split].append((utt, str(wav), text, spk))
    # > 30 s: speaker A's clips repeated
    long = np.concatenate(clips["spkA"] * 20)
    long = long[: int(31.5 * 24000)]
    assert len(long) >= 31 * 24000
    wav = root / f"{LONG_UTT}.wav"
    sf.write(wav, long, 24000, subtype="PCM_16")
    rows["train"].append((LONG_UTT, str(wav), "a long one", "spkA"))
    # built beside the cache entry, then moved into place: concurrent test runs never see half
    rows = {
        k: [(u, w.replace(str(root), str(final)), t, sp) for u, w, t, sp in v]
        for k, v in rows.items()
    }
    (root / "manifest.json").write_text(json.dumps(rows))
    try:
        os.replace(root, final)
    except OSError:  # another run finished first: use its copy
        shutil.rmtree(root, ignore_errors=True)
    return json.loads(manifest.read_text())


def write_kaldi(ws: Workspace, rows: dict[str, list[tuple[str, str, str, str]]]) -> None:
    for split, items in rows.items():
        items = sorted(items)  # by utterance id, as prepare writes them
        d = ws.split_dir(split)
        d.mkdir(parents=True, exist_ok=True)
        (d / "wav.scp").write_text("".join(f"{u} {w}\n" for u, w, _, _ in items))
        (d / "text").write_text("".join(f"{u} {t}\n" for u, _, t, _ in items))
        (d / "utt2spk").write_text("".join(f"{u} {s}\n" for u, _, _, s in items))
        (d / "instruct").write_text(
            "".join(f"{u} You are a helpful assistant.<|endofprompt|>\n" for u, *_ in items)
        )


SPEECH_CACHE = "features-speech-v1"  # bump when the corpus above changes


def tiny_model_dir() -> Path:
    """Where the vendor tests keep the tiny model (one folder for all of them: one test's
    ``tiny-cosyvoice3`` must not be another's parent folder)."""
    return Path(os.environ["VOICELAB_TEST_CACHE"]) / "tiny-cosyvoice3" / "Fun-CosyVoice3-0.5B"


#: The vendor tests' corpus: short English sentences (no digits), spoken at several speeds.
VENDOR_SENTENCES = (
    "Good morning.",
    "Please close the door.",
    "The weather is lovely today.",
    "She sells fresh bread at the corner market.",
    "A quiet river runs behind the old stone house.",
    "We walked along the beach until the sun went down.",
    "My brother plays the piano every evening after dinner.",
    "The library opens early on weekdays.",
)


def packed_workspace(
    root: Path,
    sentences: tuple[str, ...] | list[str],
    speeds: tuple[int, ...],
    dev_every: int,
    dev_at: int,
    gpus: int,
) -> Workspace:
    """A workspace on the tiny model with packed data, for the vendor tests: espeak-ng clips of
    one speaker (``spk1``), every sentence at every speed; clip ``i`` goes to dev when
    ``i % dev_every == dev_at``. Features and pack run for real (pack for ``gpus`` processes,
    one DataLoader worker each)."""
    from voicelab.blocks.kaldi import write_kaldi_dir
    from voicelab.blocks.records import Utt
    from voicelab.stages.features import FeaturesOptions, run_features
    from voicelab.stages.pack import PackOptions, run_pack
    from voicelab.upstream.tinymodel import build_tiny_model
    from voicelab.workspace import DEFAULT_INSTRUCT

    espeak = shutil.which("espeak-ng")
    if not espeak:
        pytest.skip("espeak-ng is not installed")
    tiny = build_tiny_model(tiny_model_dir())
    ws = Workspace.init(root / "ws", "spk1")
    ws.set_option("model", "base_dir", str(tiny))
    clips = root / "clips"
    clips.mkdir()
    utts: dict[str, list[Utt]] = {"train": [], "dev": []}
    for i, (speed, text) in enumerate((s, t) for s in speeds for t in sentences):
        wav = clips / f"c{i:02d}.wav"
        subprocess.run([espeak, "-v", "en-us", "-s", str(speed), "-w", str(wav), text], check=True)
        split = "dev" if i % dev_every == dev_at else "train"
        utts[split].append(Utt(f"spk1_{i:03d}", wav, text, "spk1", DEFAULT_INSTRUCT))
    for split, items in utts.items():
        write_kaldi_dir(ws.split_dir(split), items)
    run_features(ws, FeaturesOptions(device="cpu"))
    run_pack(ws, PackOptions(num_workers=1, num_gpus=gpus))
    return ws
