"""ASR throughput per backend, in multiples of real time (seconds of audio per second).

Usage::

    python benchmarks/bench_asr.py                          # espeak-ng English + AISHELL Mandarin
    python benchmarks/bench_asr.py --audio a.wav b.flac     # your own clips (<= 30 s each)
    python benchmarks/bench_asr.py --model large-v3 --device cuda --backends faster-whisper funasr

By default faster-whisper runs the registry Whisper base model (``voicelab.testing.whisper``) on
CPU with int8, which needs no network. A backend that cannot be loaded (funasr not installed,
no GPU) is reported as unavailable with the reason. Model load time is reported apart; the first
clip is transcribed once untimed as a warm-up. CPU seconds (all threads of this process) per
second of audio are printed too: on a shared machine they vary less than wall time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from voicelab.blocks.asr import AsrOptions, load_transcriber
from voicelab.errors import VoiceLabError

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for "
    "her brother Bob.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her Wednesday at "
    "the train station.",
]


def _load(path: Path) -> np.ndarray:
    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    return soxr.resample(audio, sr, 16000).astype(np.float32) if sr != 16000 else audio


def espeak_clips(tmp: Path) -> list[tuple[str, np.ndarray]]:
    clips = []
    for i, text in enumerate(SENTENCES):
        wav = tmp / f"en{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)
        clips.append((f"espeak-en-{i}", _load(wav)))
    return clips


def aishell() -> list[tuple[str, np.ndarray]]:
    from voicelab.testing.mandarin import aishell_clips

    try:
        return [(p.stem, _load(p)) for p, _ in aishell_clips()]
    except VoiceLabError as e:
        print(f"(AISHELL clips skipped: {e.one_line()})")
        return []


def bench(opts: AsrOptions, clips: list[tuple[str, np.ndarray]], repeat: int) -> dict:
    t0 = time.perf_counter()
    tr = load_transcriber(opts)
    load_s = time.perf_counter() - t0
    tr.transcribe(clips[0][1])  # warm-up
    audio_s = compute_s = 0.0
    cpu0 = time.process_time()
    by_lang: dict[str, list[float]] = {}
    for _ in range(repeat):
        for _name, audio in clips:
            t = time.perf_counter()
            res = tr.transcribe(audio)
            dt = time.perf_counter() - t
            audio_s += len(audio) / 16000
            compute_s += dt
            acc = by_lang.setdefault(res.language or "?", [0.0, 0.0])
            acc[0] += len(audio) / 16000
            acc[1] += dt
    cpu_s = time.process_time() - cpu0
    return {
        "cpu_s": cpu_s,
        "device": getattr(tr, "device", "?"),
        "compute_type": getattr(tr, "compute_type", "-"),
        "load_s": load_s,
        "audio_s": audio_s,
        "compute_s": compute_s,
        "rtf_x": audio_s / compute_s if compute_s else float("nan"),
        "by_lang": {k: v[0] / v[1] for k, v in by_lang.items() if v[1]},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--audio", nargs="*", type=Path, help="clips to transcribe (default: built-in)")
    ap.add_argument("--backends", nargs="*", default=["faster-whisper", "funasr"])
    ap.add_argument("--model", default=None, help="faster-whisper model (default: registry base)")
    ap.add_argument("--funasr-model", default="paraformer-zh")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compute-type", default="auto")
    ap.add_argument("--language", default=None)
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.audio:
            clips = [(p.name, _load(p)) for p in args.audio]
        else:
            clips = espeak_clips(Path(tmp)) + aishell()
    total = sum(len(a) for _, a in clips) / 16000
    print(f"{len(clips)} clips, {total:.1f} s of audio; {os.cpu_count()} CPU cores visible")

    for backend in args.backends:
        if backend == "faster-whisper":
            model = args.model
            if model is None:
                from voicelab.testing.whisper import whisper_base_dir

                model = str(whisper_base_dir())
            label = Path(model).name if Path(model).is_dir() else model
        else:
            model, label = args.funasr_model, args.funasr_model
        opts = AsrOptions(
            backend=backend,
            model=model,
            device=args.device,
            compute_type=args.compute_type,
            language=args.language,
            beam_size=args.beam_size,
        )
        try:
            r = bench(opts, clips, args.repeat)
        except VoiceLabError as e:
            print(f"{backend:15s} {label:22s} unavailable: {e.one_line()}")
            continue
        langs = ", ".join(f"{k} {v:.1f}x" for k, v in sorted(r["by_lang"].items()))
        print(
            f"{backend:15s} {label:22s} {r['device']}/{r['compute_type']}: "
            f"{r['rtf_x']:.1f}x real time ({r['audio_s']:.1f} s audio in {r['compute_s']:.1f} s; "
            f"{langs}); {r['cpu_s'] / r['audio_s']:.2f} CPU s per audio s; "
            f"load {r['load_s']:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
