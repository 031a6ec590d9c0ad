"""Throughput of ``voicelab prepare``'s intake + VAD + QC (no ASR), and of ASR per backend.

Figures are multiples of real time (seconds of audio per second of wall time). Intake + VAD +
QC is what ``prepare`` does to every file before ASR: decode, downmix, resample to 24 kHz and
16 kHz, Silero VAD, segmentation, clip writing, audio metrics and the audio QC rules.

    python benchmarks/bench_prepare.py                 # ~10 min of corpus audio, 1 and 2 workers
    python benchmarks/bench_prepare.py --minutes 30 --workers 2
    python benchmarks/bench_prepare.py --asr           # + Whisper base on CPU (a few segments)

The corpus is the generated test corpus (espeak-ng): its long recording and clips, copied under
distinct names until the requested duration is reached.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _intake_one(args: tuple[str, str, str]) -> tuple[float, int, int]:
    from voicelab.blocks import qc, vad
    from voicelab.stages import prepare as P

    path, prefix, clips = args
    rec = P.intake_source(Path(path), prefix, Path(clips), vad.SegmentOptions(), whole=False)
    opts = qc.QcOptions()
    excluded = sum(bool(qc.evaluate(s["metrics"], opts, "audio")) for s in rec["segments"])
    return float(rec.get("duration") or 0.0), len(rec["segments"]), excluded


def _warm() -> None:
    # Load onnxruntime and the VAD session before timing (once per worker process).
    import numpy as np

    from voicelab.blocks import vad

    vad.speech_probs(np.zeros(16000, np.float32))


def build_folder(dest: Path, minutes: float) -> tuple[list[Path], float]:
    from voicelab.testing.corpus import build_corpus

    corpus = build_corpus()
    pool = [corpus.long_path] + [c.path for c in corpus.clips if c.kind in ("good", "padded")]
    durations = {corpus.long_path: next(c.duration for c in corpus.clips if c.kind == "long")}
    durations.update({c.path: c.duration for c in corpus.clips})
    files: list[Path] = []
    total = 0.0
    i = 0
    while total < minutes * 60:
        src = pool[i % len(pool)]
        out = dest / f"{i:04d}_{src.name}"
        shutil.copyfile(src, out)
        files.append(out)
        total += durations[src]
        i += 1
    return files, total


def bench_intake(files: list[Path], clips: Path, workers: int) -> dict:
    jobs = [(str(f), f"b_{f.stem}", str(clips)) for f in files]
    if workers <= 1:
        _warm()
        t0 = time.perf_counter()
        results = [_intake_one(j) for j in jobs]
    else:
        with ProcessPoolExecutor(workers, initializer=_warm) as ex:
            list(ex.map(_warm_noop, range(workers)))
            t0 = time.perf_counter()
            results = list(ex.map(_intake_one, jobs, chunksize=1))
    wall = time.perf_counter() - t0
    audio = sum(r[0] for r in results)
    return {
        "workers": workers,
        "files": len(files),
        "audio_s": round(audio, 1),
        "wall_s": round(wall, 2),
        "x_real_time": round(audio / wall, 1),
        "segments": sum(r[1] for r in results),
        "excluded_by_audio_qc": sum(r[2] for r in results),
    }


def _warm_noop(_: int) -> None:
    return None


def bench_asr(clips: Path, n: int) -> list[dict]:
    from voicelab.blocks import audio as au
    from voicelab.blocks.asr import AsrOptions, load_transcriber

    out = []
    segs = sorted(clips.glob("*.wav"))[:n]
    audio = [au.read_wav_mono(p, 16000)[0] for p in segs]
    seconds = sum(a.size for a in audio) / 16000
    configs = []
    try:
        from voicelab.testing.whisper import whisper_base_dir

        configs.append(
            (
                "faster-whisper base int8 cpu",
                AsrOptions(
                    model=str(whisper_base_dir()), device="cpu", compute_type="int8", language="en"
                ),
            )
        )
    except Exception as e:  # the test extra is missing: report it and go on
        out.append({"backend": "faster-whisper", "skipped": str(e)})
    import importlib.util

    if importlib.util.find_spec("funasr") is None:
        out.append({"backend": "funasr", "skipped": "funasr is not installed (extra: funasr)"})
    for name, opts in configs:
        t0 = time.perf_counter()
        tr = load_transcriber(opts)
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        for a in audio:
            tr.transcribe(a)
        wall = time.perf_counter() - t0
        out.append(
            {
                "backend": name,
                "segments": len(audio),
                "audio_s": round(seconds, 1),
                "load_s": round(load, 2),
                "wall_s": round(wall, 2),
                "x_real_time": round(seconds / wall, 2),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="audio to process (default 10)")
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="process counts")
    ap.add_argument("--asr", action="store_true", help="also time ASR on a few segments")
    ap.add_argument("--asr-segments", type=int, default=6)
    args = ap.parse_args()
    report: dict = {"cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        src, clips = Path(tmp) / "src", Path(tmp) / "clips"
        src.mkdir()
        files, total = build_folder(src, args.minutes)
        report["corpus_min"] = round(total / 60, 1)
        report["intake_vad_qc"] = []
        for w in args.workers:
            shutil.rmtree(clips, ignore_errors=True)
            r = bench_intake(files, clips, w)
            report["intake_vad_qc"].append(r)
            print(
                f"intake+VAD+QC, {w} worker(s): {r['audio_s']:.0f} s of audio in "
                f"{r['wall_s']:.2f} s = {r['x_real_time']:.0f}x real time "
                f"({r['segments']} segments)",
                file=sys.stderr,
            )
        if args.asr:
            report["asr"] = bench_asr(clips, args.asr_segments)
            for r in report["asr"]:
                print(f"ASR {r}", file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
