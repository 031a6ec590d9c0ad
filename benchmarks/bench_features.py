"""Features front end speed on CPU, in multiples of real time.

Measures, on espeak-ng speech written as 24 kHz 16-bit wav (CosyVoice 3's rate) plus a 22.05 kHz
copy (a source that needs the extra resampling step):

- decode (soundfile), resample to 24 kHz, pad to 960 and resample to 16 kHz (torchaudio's
  default sinc resampler in numpy, as upstream resamples),
  Kaldi fbank + CMN (numpy float32 and kaldi-native-fbank), Whisper log-mel (numpy);
- the whole front end per utterance on 1 thread and on a thread pool of N threads;
- ``run_features`` end to end with the tiny ONNX stand-ins (so the models cost ~nothing and
  the number is the pipeline's own overhead), 1 vs N worker threads.

Usage: python benchmarks/bench_features.py [--minutes 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from voicelab.blocks import fbank
from voicelab.stages import features as feat

TEXTS = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well, these days a chicken leg is a rare dish.",
    "Rice is often served in round bowls, and the juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck. Four hours of steady work faced us.",
]


def make_corpus(d: Path, minutes: float) -> tuple[list[Path], list[Path], float]:
    import soundfile as sf
    import soxr

    wavs24, wavs22, total = [], [], 0.0
    i = 0
    while total < minutes * 60:
        raw = d / f"raw{i}.wav"
        voice = ["en-us+m3", "en+f3", "en+m1"][i % 3]
        subprocess.run(
            # speed and pitch vary so that every clip is distinct audio (the cache dedups)
            [
                "espeak-ng",
                "-v",
                voice,
                "-s",
                str(150 + i),
                "-p",
                str(30 + i % 40),
                "-w",
                str(raw),
                TEXTS[i % len(TEXTS)],
            ],
            check=True,
            capture_output=True,
        )
        x, sr = sf.read(raw, dtype="float32")
        p24, p22 = d / f"u{i:04d}_24k.wav", d / f"u{i:04d}_22k.wav"
        sf.write(p24, soxr.resample(x, sr, 24000), 24000, subtype="PCM_16")
        sf.write(p22, x, sr, subtype="PCM_16")
        wavs24.append(p24)
        wavs22.append(p22)
        total += len(x) / sr
        i += 1
    return wavs24, wavs22, total


def timed(fn, *args, repeat: int = 1) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    if not shutil.which("espeak-ng"):
        sys.exit("espeak-ng is needed")
    tmp = Path(tempfile.mkdtemp(prefix="bench_features."))
    try:
        run(tmp, args.minutes, args.threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp: Path, minutes: float, threads: int) -> None:
    print("BLAS threads limited to 1 (as run_features does):")
    with feat.one_blas_thread():
        measure(tmp, minutes, threads)


def measure(tmp: Path, minutes: float, threads: int) -> None:
    wavs24, wavs22, total = make_corpus(tmp, minutes)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"corpus: {len(wavs24)} utterances, {total:.1f} s of speech; "
        f"{os.cpu_count()} CPU(s), load average {load:.1f}"
    )

    def rt(seconds: float) -> str:
        return f"{total / seconds:8.0f}x real time ({seconds * 1000:7.1f} ms)"

    decoded = [feat.load_audio(p) for p in wavs24]
    decoded22 = [feat.load_audio(p) for p in wavs22]
    padded = [feat.to_24k_padded(x, sr)[0] for x, sr in decoded]
    x16 = [feat.to_16k_exact(x) for x in padded]

    steps = {
        "decode 24 kHz wav (soundfile)": lambda: [feat.load_audio(p) for p in wavs24],
        "resample 22.05 -> 24 kHz (torchaudio's sinc)": lambda: [
            feat.to_24k_padded(x, s) for x, s in decoded22
        ],
        "pad + resample 24 -> 16 kHz (same)": lambda: [feat.to_16k_exact(x) for x in padded],
        "Kaldi fbank + CMN (numpy float32)": lambda: [fbank.cmn(fbank.kaldi_fbank(x)) for x in x16],
        "Kaldi fbank + CMN (kaldi-native-fbank)": lambda: [
            fbank.cmn(fbank.kaldi_fbank(x, backend="knf")) for x in x16
        ],
        "Whisper log-mel 128 (numpy)": lambda: [fbank.whisper_log_mel(x) for x in x16],
    }
    print("\nsingle thread, per step:")
    for name, fn in steps.items():
        print(f"  {name:42s} {rt(timed(fn, repeat=3))}")

    def whole(p: Path) -> None:
        x, sr = feat.load_audio(p)
        feat.front_end(x, sr)

    print("\nwhole front end (decode, resample, pad, resample, fbank, log-mel):")
    for src, wavs in (("24 kHz", wavs24), ("22.05 kHz", wavs22)):
        one = timed(lambda w=wavs: [whole(p) for p in w], repeat=2)
        with ThreadPoolExecutor(threads) as pool:
            many = timed(lambda w=wavs: list(pool.map(whole, w)), repeat=2)
        print(f"  {src:10s} 1 thread:  {rt(one)}")
        print(f"  {src:10s} {threads} threads: {rt(many)}")

    # the stage end to end with the tiny stand-ins
    import onnxruntime  # noqa: F401  (imports are not what this measures)
    import torch  # noqa: F401

    from voicelab.testing import tiny_onnx
    from voicelab.workspace import Workspace

    onnx = tmp / "onnx"
    tiny_onnx.write_all(onnx)
    print("\nrun_features end to end (tiny ONNX stand-ins, cache empty):")
    for k, n in enumerate([threads, 1, threads, 1] if threads > 1 else [1, 1]):
        ws = Workspace.init(tmp / f"ws{k}", "bench")
        d = ws.split_dir("train")
        d.mkdir(parents=True)
        (d / "wav.scp").write_text("".join(f"u{i} {p}\n" for i, p in enumerate(wavs24)))
        (d / "text").write_text("".join(f"u{i} t\n" for i in range(len(wavs24))))
        (d / "utt2spk").write_text("".join(f"u{i} bench\n" for i in range(len(wavs24))))
        opts = feat.FeaturesOptions(onnx_dir=onnx, device="cpu", threads=n)
        t0 = time.perf_counter()
        res = feat.run_features(ws, opts)
        dt = time.perf_counter() - t0
        print(f"  {n} worker thread(s): {rt(dt)}  computed {res.computed}")


if __name__ == "__main__":
    main()
