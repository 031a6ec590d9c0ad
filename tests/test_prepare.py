"""``voicelab prepare`` end to end on the generated corpus with the real Whisper base model.

Whisper on a shared 2-core CPU takes seconds per segment, so the ASR'd set is small: one
module-scoped run over a subset of the corpus (7 segments transcribed) that most tests read,
copies of its workspace for the tests that rerun it (its ASR cache travels along), and the long
recording only with ``--limit``.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voicelab.blocks.kaldi import read_kaldi_dir, write_kaldi_dir
from voicelab.blocks.qc import QcOptions
from voicelab.blocks.records import Segment, Utt
from voicelab.errors import InputError, StageError
from voicelab.paths import has_whitespace
from voicelab.stages import prepare as P
from voicelab.state import load_record
from voicelab.testing.corpus import Corpus, build_corpus
from voicelab.workspace import DEFAULT_INSTRUCT, Workspace

SUBSET_KINDS = ("stereo", "mp3", "flac", "m4a", "narrowband", "zero", "corrupt", "silence")
CER_BOUND = 0.25  # measured on this corpus: at most ~0.12 per clip with Whisper base


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return build_corpus()


@pytest.fixture(scope="module")
def whisper_dir() -> Path:
    from voicelab.testing.whisper import whisper_base_dir

    return whisper_base_dir()


def _asr(whisper_dir: Path, **kw) -> P.PrepareOptions:
    return P.PrepareOptions(
        whisper_model=str(whisper_dir), device="cpu", compute_type="int8", language="en", **kw
    )


def _copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)
    return dest


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


@pytest.fixture(scope="module")
def main_run(tmp_path_factory: pytest.TempPathFactory, corpus: Corpus, whisper_dir: Path):
    """Two good clips, the hard cases and the path with spaces and Chinese characters."""
    base = tmp_path_factory.mktemp("main")
    src = base / "source"
    for clip in (corpus.clips[0], corpus.clips[6]):
        _copy(clip.path, src / "clips" / clip.path.name)
    for kind in (*SUBSET_KINDS, "clipped"):
        _copy(corpus.hard[kind], src / "hard" / corpus.hard[kind].name)
    uni = corpus.hard["unicode_path"]
    _copy(uni, src / uni.parent.name / uni.name)
    before = _snapshot(src)
    ws = Workspace.init(base / "ws", "spk1", str(src))
    result = P.run_prepare(ws, _asr(whisper_dir))
    assert _snapshot(src) == before  # the source folder is never written
    return ws, result, src


def _by_source(result: P.PrepareResult, name: str) -> Segment:
    return next(s for s in result.segments if Path(s.source).name == name)


def _letters(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalpha() or c.isspace()).split())


def cer(ref: str, hyp: str) -> float:
    a, b = _letters(ref), _letters(hyp)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1] / max(1, len(a))


# ---- the main run ----------------------------------------------------------------------------


def test_bad_files_reported_with_reasons(main_run, corpus: Corpus) -> None:
    _, result, _ = main_run
    bad = {Path(b["path"]).name: b["reason"] for b in result.bad_files}
    assert bad == {
        corpus.hard["zero"].name: "zero_length",
        corpus.hard["corrupt"].name: "corrupt",
        corpus.hard["silence"].name: "silent",
    }
    narrow = _by_source(result, corpus.hard["narrowband"].name)
    assert narrow.status == "excluded"
    assert [r["code"] for r in narrow.reasons] == ["low_sample_rate"]
    assert narrow.reasons[0]["value"] == 8000
    clipped = _by_source(result, corpus.hard["clipped"].name)
    assert clipped.status == "excluded" and clipped.reasons[0]["code"] == "clipping"
    assert clipped.asr is None and narrow.asr is None  # excluded before ASR: no time spent
    for code in ("zero_length", "corrupt", "silent", "low_sample_rate", "clipping"):
        assert result.by_reason[code] == 1


def test_formats_accepted_and_transcribed(main_run, corpus: Corpus) -> None:
    _, result, _ = main_run
    cers = {}
    for kind in ("stereo", "mp3", "flac", "m4a", "unicode_path"):
        seg = _by_source(result, corpus.hard[kind].name)
        assert seg.status == "kept", (kind, seg.reasons)
        cers[kind] = cer(corpus.clip(kind).text, seg.text)
    for clip in (corpus.clips[0], corpus.clips[6]):
        seg = _by_source(result, clip.path.name)
        assert seg.status == "kept"
        cers[clip.path.name] = cer(clip.text, seg.text)
    print("CER per clip:", {k: round(v, 3) for k, v in cers.items()})
    assert all(v <= CER_BOUND for v in cers.values()), cers
    assert result.asr_calls == 7


def test_unicode_path_survives(main_run, corpus: Corpus) -> None:
    ws, result, _ = main_run
    seg = _by_source(result, corpus.hard["unicode_path"].name)
    assert "说话人 一" in seg.source and Path(seg.source).is_file()
    assert not has_whitespace(seg.utt) and "片段" in seg.utt
    assert not has_whitespace(seg.wav) and Path(seg.wav).is_file()
    assert Path(seg.wav).parent == ws.prepare_dir / "clips"


def test_kaldi_dirs_well_formed(main_run) -> None:
    ws, result, _ = main_run
    kept = {s.utt for s in result.segments if s.status == "kept"}
    seen: set[str] = set()
    for split in ("train", "dev"):
        d = ws.split_dir(split)
        keys = {}
        for name in ("wav.scp", "text", "utt2spk", "instruct"):
            lines = (d / name).read_text("utf-8").splitlines()
            assert lines == sorted(lines)
            keys[name] = [ln.split(" ", 1)[0] for ln in lines]
            assert all(len(ln.split(" ", 1)) == 2 and ln.split(" ", 1)[1] for ln in lines)
        assert len({tuple(k) for k in keys.values()}) == 1  # every utt in every file
        spk2utt = (d / "spk2utt").read_text("utf-8").split()
        assert spk2utt[0] == "spk1" and sorted(spk2utt[1:]) == sorted(keys["wav.scp"])
        for u in read_kaldi_dir(d):
            assert u.wav.is_absolute() and not has_whitespace(str(u.wav)) and u.wav.is_file()
            assert u.spk == "spk1" and u.instruct == DEFAULT_INSTRUCT and u.text
            info = sf.info(str(u.wav))
            assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
            assert u.utt not in seen
            seen.add(u.utt)
        assert keys["wav.scp"]
    assert seen == kept
    assert result.dev >= 1 and result.train + result.dev == result.kept


def test_manifests_and_record(main_run) -> None:
    ws, result, _ = main_run
    rows = [json.loads(x) for x in (ws.prepare_dir / "segments.jsonl").read_text().splitlines()]
    assert len(rows) == len(result.segments)
    for row in rows:
        for key in ("duration", "snr_db", "clip_ratio", "loudness_db", "speech_ratio"):
            assert key in row["qc"]
    qc_rows = list(csv.reader((ws.prepare_dir / "qc.tsv").open(encoding="utf-8"), delimiter="\t"))
    assert qc_rows[0][:4] == ["id", "status", "split", "reasons"]
    assert len(qc_rows) == 1 + len(result.segments) + len(result.bad_files)
    rec = load_record(ws, "prepare")
    assert rec is not None and rec.status == "done"
    for key in ("kept_minutes", "kept", "excluded", "by_reason", "train", "dev"):
        assert key in rec.figures
    assert rec.figures["kept"] == result.kept
    lines = result.summary_lines()
    assert any("far too little" in ln for ln in lines)  # < 10 minutes kept
    assert any("zero_length" in ln for ln in lines)


def _clone(main_run, tmp_path: Path) -> Workspace:
    ws, _, _ = main_run
    shutil.copytree(ws.root, tmp_path / "ws")
    return Workspace.open(tmp_path / "ws")


def test_rerun_and_qc_change_redo_no_asr(main_run, tmp_path: Path, whisper_dir: Path) -> None:
    _, first, _ = main_run
    ws = _clone(main_run, tmp_path)
    intake_lines = (ws.prepare_dir / "intake.jsonl").read_text().count("\n")
    again = P.run_prepare(ws, _asr(whisper_dir))
    assert again.asr_calls == 0 and again.intake_audio_seconds == 0.0
    assert [s.text for s in again.segments] == [s.text for s in first.segments]
    assert (ws.prepare_dir / "intake.jsonl").read_text().count("\n") == intake_lines
    # A stricter threshold: the faster half of the kept segments is excluded, nothing redone.
    rates = sorted(s.qc["chars_per_second"] for s in first.segments if s.status == "kept")
    limit = rates[len(rates) // 2]
    strict = P.run_prepare(ws, _asr(whisper_dir, qc_opts=QcOptions(max_chars_per_second=limit)))
    assert strict.asr_calls == 0 and strict.intake_audio_seconds == 0.0
    assert strict.by_reason["too_fast"] == sum(r > limit for r in rates)
    assert 0 < strict.kept < first.kept


def test_review_round_trip(main_run, tmp_path: Path, whisper_dir: Path, corpus: Corpus) -> None:
    ws = _clone(main_run, tmp_path)
    res = P.run_prepare(ws, _asr(whisper_dir, review=True))
    path = ws.prepare_dir / "review.tsv"
    assert res.review_path == path
    rows = list(csv.reader(path.open(encoding="utf-8"), delimiter="\t"))
    assert rows[0] == list(P.REVIEW_COLUMNS)
    risks = [float(r[4]) for r in rows[1:]]
    assert risks == sorted(risks, reverse=True) and risks[0] >= 1  # excluded first
    by_id = {r[0]: r for r in rows[1:]}
    kept_ids = sorted(i for i, r in by_id.items() if r[3] == "1")
    fix_id, drop_id = kept_ids[0], kept_ids[1]
    clipped_id = _by_source(res, corpus.hard["clipped"].name).utt
    narrow_id = _by_source(res, corpus.hard["narrowband"].name).utt
    by_id[fix_id][2] = "A corrected transcript."
    by_id[drop_id][3] = "0"
    by_id[clipped_id][3] = "1"  # soft reason: a person may keep it (it gets transcribed now)
    by_id[narrow_id][3] = "1"  # hard reason: upstream would drop it anyway
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(rows[0])
        w.writerows(by_id.values())
    applied = P.run_prepare(ws, _asr(whisper_dir, apply_review=path))
    assert applied.review_applied == 4
    assert applied.asr_calls == 1  # only the clip kept by review; nothing redone
    texts = dict(ln.split(" ", 1) for ln in _all_lines(ws, "text"))
    assert texts[fix_id] == "A corrected transcript."
    assert drop_id not in texts and clipped_id in texts and narrow_id not in texts
    assert applied.by_reason["review_drop"] == 1
    # The edits stay applied on later runs (no --apply-review), with no ASR.
    later = P.run_prepare(ws, _asr(whisper_dir))
    assert later.asr_calls == 0
    assert dict(ln.split(" ", 1) for ln in _all_lines(ws, "text")) == texts


def _all_lines(ws: Workspace, name: str) -> list[str]:
    return [
        ln
        for split in ("train", "dev")
        for ln in (ws.split_dir(split) / name).read_text("utf-8").splitlines()
    ]


# ---- the long recording, --limit, ASR option change ------------------------------------------


def test_limit_on_long_recording(tmp_path: Path, corpus: Corpus, whisper_dir: Path) -> None:
    src = tmp_path / "src"
    _copy(corpus.long_path, src / "long recording.wav")
    ws = Workspace.init(tmp_path / "ws", "spk1", str(src))
    res = P.run_prepare(ws, _asr(whisper_dir, limit=2, beam_size=1))
    assert res.limited and len(res.segments) == 2 and res.asr_calls == 2
    assert res.throughput > 0 and res.source_seconds == pytest.approx(154, abs=1)
    assert res.projected_seconds > 0
    assert any("--limit" in ln and "would take about" in ln for ln in res.summary_lines())
    for seg, sentence in zip(res.segments, corpus.long_sentences, strict=False):
        assert cer(sentence, seg.text) <= CER_BOUND, (sentence, seg.text)
    # The whole recording was segmented at intake: within bounds, cut in the inserted pauses.
    rec = json.loads((ws.prepare_dir / "intake.jsonl").read_text().splitlines()[-1])
    segs = rec["segments"]
    assert len(segs) == len(corpus.long_sentences)
    assert all(2.0 <= s["metrics"]["duration"] <= 20.4 for s in segs)
    for a, b in itertools.pairwise(segs):
        cut = (a["end"] + b["start"]) / 2
        assert any(p0 <= cut <= p1 for p0, p1 in corpus.long_pauses), cut
    assert not has_whitespace(segs[0]["utt"]) and segs[0]["utt"].startswith("spk1_long_recording")
    # Changing an ASR option redoes ASR only: no intake, the same segments.
    intake_lines = (ws.prepare_dir / "intake.jsonl").read_text().count("\n")
    res2 = P.run_prepare(ws, _asr(whisper_dir, limit=2, beam_size=2))
    assert res2.asr_calls == 2 and res2.intake_audio_seconds == 0.0
    assert (ws.prepare_dir / "intake.jsonl").read_text().count("\n") == intake_lines


# ---- transcripts import ----------------------------------------------------------------------


def _import_source(tmp_path: Path, corpus: Corpus) -> tuple[Path, list]:
    src = tmp_path / "src"
    clips = [corpus.clips[1], corpus.clips[3], corpus.clip("unicode_path")]
    for c in clips[:2]:
        _copy(c.path, src / c.path.name)
    _copy(clips[2].path, src / "sub dir" / clips[2].path.name)
    return src, clips


@pytest.mark.parametrize("fmt", ["txt", "lab", "list", "csv", "tsv"])
def test_transcripts_import(tmp_path: Path, corpus: Corpus, fmt: str) -> None:
    src, clips = _import_source(tmp_path, corpus)
    files = sorted(p for p in src.rglob("*.wav"))
    texts = {f.name: next(c.text for c in clips if c.path.name == f.name) for f in files}
    list_file = None
    if fmt in ("txt", "lab"):
        for f in files:
            f.with_suffix(f".{fmt}").write_text(texts[f.name] + "\n", encoding="utf-8")
    elif fmt == "list":
        # Written on Windows by GPT-SoVITS: paths do not exist here; matched by base name.
        list_file = tmp_path / "slicer_opt.list"
        list_file.write_text(
            "".join(f"C:\\GPT-SoVITS\\output\\{f.name}|spk|EN|{texts[f.name]}\n" for f in files),
            encoding="utf-8",
        )
    else:
        list_file = tmp_path / f"labels.{fmt}"
        sep = "," if fmt == "csv" else "\t"
        with list_file.open("w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, delimiter=sep)
            w.writerow(["file", "text"])
            for f in files:
                w.writerow([f.relative_to(src).as_posix(), texts[f.name]])
    ws = Workspace.init(tmp_path / "ws", "spk1", str(src))
    res = P.run_prepare(ws, P.PrepareOptions(asr="transcripts", transcripts=list_file))
    assert res.asr_calls == 0 and not (ws.prepare_dir / "asr_cache.jsonl").exists()
    assert res.kept == 3, [s.reasons for s in res.segments]
    got = {Path(s.source).name: s.text for s in res.segments}
    assert got == texts
    assert all(s.qc["avg_logprob"] is None for s in res.segments)


def test_transcripts_missing(tmp_path: Path, corpus: Corpus) -> None:
    src, clips = _import_source(tmp_path, corpus)
    ws = Workspace.init(tmp_path / "ws", "spk1", str(src))
    with pytest.raises(InputError, match="no transcripts"):
        P.run_prepare(ws, P.PrepareOptions(asr="transcripts"))
    (src / clips[0].path.name).with_suffix(".txt").write_text(clips[0].text, encoding="utf-8")
    (src / clips[1].path.name).with_suffix(".txt").write_text(clips[1].text, encoding="utf-8")
    res = P.run_prepare(ws, P.PrepareOptions(asr="transcripts"))
    assert res.kept == 2 and [b["reason"] for b in res.bad_files] == ["no_transcript"]


# ---- bad input -------------------------------------------------------------------------------


def test_folder_errors(tmp_path: Path, corpus: Corpus) -> None:
    ws = Workspace.init(tmp_path / "ws", "spk1")
    with pytest.raises(InputError, match="not found"):
        P.run_prepare(ws, P.PrepareOptions(wav_dir=tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no audio files"):
        P.run_prepare(ws, P.PrepareOptions(wav_dir=tmp_path / "empty"))
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match="no audio files"):
        P.run_prepare(ws, P.PrepareOptions(wav_dir=tmp_path / "empty"))
    bad = tmp_path / "bad"
    for kind in ("zero", "corrupt", "silence"):
        _copy(corpus.hard[kind], bad / corpus.hard[kind].name)
    with pytest.raises(StageError, match="no usable segment"):
        P.run_prepare(ws, P.PrepareOptions(wav_dir=bad, asr="faster-whisper"))
    assert (ws.prepare_dir / "qc.tsv").read_text().count("unusable") == 3
    assert load_record(ws, "prepare").status == "failed"


# ---- kill and resume (the real CLI in a subprocess) ------------------------------------------


def _cli(ws: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "voicelab", "-q", "-w", str(ws), "prepare", *args]


def _run_until(cmd: list[str], env: dict, cache: Path, lines: int) -> subprocess.Popen:
    """Start ``cmd`` and return once the ASR cache holds ``lines`` lines (still running)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if cache.is_file() and cache.read_text().count("\n") >= lines:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1].decode()
    return proc


def test_killed_run_resumes_without_redoing_asr(
    tmp_path: Path, corpus: Corpus, whisper_dir: Path
) -> None:
    src = tmp_path / "src"
    for clip in corpus.clips[7:11]:
        _copy(clip.path, src / clip.path.name)
    Workspace.init(tmp_path / "ws", "spk1", str(src))
    ws = Workspace.open(tmp_path / "ws")
    cache = ws.prepare_dir / "asr_cache.jsonl"
    # Flags apply to one run (issue 14): these settings are kept explicitly, as config set does.
    for key, value in (("whisper_model", str(whisper_dir)), ("device", "cpu"),
                       ("compute_type", "int8"), ("language", "en")):  # fmt: skip
        ws.set_option("prepare", key, value)
    env = {**os.environ, "VOICELAB_NO_PROGRESS": "1"}
    # 1. SIGKILL once the first transcript is cached: nothing can be cleaned up.
    proc = _run_until(_cli(ws.root), env, cache, 1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    after_kill = cache.read_text().count("\n")
    assert 1 <= after_kill < 4
    rec = load_record(ws, "prepare")
    assert rec is not None and rec.status == "running"  # killed: never marked done
    # 2. Ctrl-C (SIGINT) once one more is cached: the CLI says how to resume, exit 130.
    proc = _run_until(_cli(ws.root), env, cache, after_kill + 1)  # options from voicelab.toml
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    after_int = cache.read_text().count("\n")
    if after_int < 4:  # (the run may have finished before the signal landed)
        assert proc.returncode == 130 and b"run the same command again" in err
        assert load_record(ws, "prepare").status == "pending"
    # 3. The rerun transcribes only what is left.
    out = subprocess.run(_cli(ws.root), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    keys = [json.loads(x)["k"] for x in cache.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 4  # every segment transcribed exactly once
    assert "4 segments kept" in out.stdout
    assert load_record(Workspace.open(ws.root), "prepare").status == "done"
    saved = Workspace.open(ws.root).config.section("prepare")
    assert saved["whisper_model"] == str(whisper_dir) and saved["language"] == "en"


def test_source_ids_unique_and_readable(tmp_path: Path) -> None:
    files = [tmp_path / "a" / "take 1.wav", tmp_path / "b" / "take 1.wav", tmp_path / "说话.wav"]
    ids = P.source_ids(tmp_path, files)
    assert len(set(ids.values())) == 3
    assert ids[files[2]] == "说话"
    assert all(not has_whitespace(v) for v in ids.values())
    assert ids[files[0]].startswith("a_take_1")


# ---- pieces ----------------------------------------------------------------------------------


def test_split_dev_by_source() -> None:
    kept = [Segment(f"s_{i:02d}_{j:04d}", source_rel=f"{i:02d}.wav") for i in range(40)
            for j in range(5)]  # fmt: skip
    dev = P.split_dev(kept, 0.05)
    assert 8 <= len(dev) <= 15
    sources = {u.rsplit("_", 1)[0] for u in dev}
    assert all(f"{s}_{j:04d}" in dev for s in sources for j in range(5))  # whole recordings
    assert P.split_dev(list(reversed(kept)), 0.05) == dev  # deterministic
    big = [Segment(f"u{i:05d}", source_rel=f"{i}.wav") for i in range(5000)]
    assert len(P.split_dev(big, 0.05)) == 50
    few = [Segment(f"u{i}", source_rel=f"{i}.wav") for i in range(20)]
    assert len(P.split_dev(few, 0.05)) == 2
    one = [Segment(f"u{i:03d}", source_rel="long.wav") for i in range(30)]
    assert len(P.split_dev(one, 0.05)) == 2  # a single recording still gets a dev set
    assert P.split_dev(one[:1], 0.05) == set()


def test_kaldi_windows_paths_and_whitespace(tmp_path: Path) -> None:
    d = tmp_path / "k"
    d.mkdir()
    (d / "wav.scp").write_text("x_0001 C:\\AIGC\\数据集\\xuan\\a.wav\n", encoding="utf-8")
    (d / "text").write_text("x_0001 你好  世界\n", encoding="utf-8")
    (u,) = read_kaldi_dir(d)
    assert u.wav == Path("/mnt/c/AIGC/数据集/xuan/a.wav")
    assert u.spk == "x" and u.text == "你好 世界" and u.instruct is None
    with pytest.raises(ValueError):
        write_kaldi_dir(d, [Utt("a_1", Path("/a b/c.wav"), "t", "a")])
    with pytest.raises(ValueError):
        write_kaldi_dir(d, [Utt("a 1", Path("/a/c.wav"), "t", "a")])
    with pytest.raises(ValueError):
        write_kaldi_dir(d, [Utt("a_1", Path("rel/c.wav"), "t", "a")])
    write_kaldi_dir(d, [Utt("b_2", Path("/x/2.wav"), "two\nlines", "b", "I.<|endofprompt|>"),
                        Utt("b_1", Path("/x/1.wav"), "one", "b", "I.<|endofprompt|>")])  # fmt: skip
    back = read_kaldi_dir(d)
    assert [x.utt for x in back] == ["b_1", "b_2"] and back[1].text == "two lines"
    assert (d / "spk2utt").read_text() == "b b_1 b_2\n"


def test_transcript_file_formats(tmp_path: Path) -> None:
    lst = tmp_path / "a.list"
    lst.write_text("D:\\x\\a.wav|spk|ZH|你好\n\n/abs/b.wav|spk|en|Hello | world\n", "utf-8")
    got = P.load_transcript_file(lst)
    assert got[0][0] == "D:\\x\\a.wav" and got[0][1].text == "你好" and got[0][1].language == "zh"
    assert got[1][1].text == "Hello | world"
    bad = tmp_path / "b.list"
    bad.write_text("only|two\n", "utf-8")
    with pytest.raises(InputError, match="path\\|speaker\\|lang\\|text"):
        P.load_transcript_file(bad)
    headerless = tmp_path / "c.csv"
    headerless.write_text("a.wav,Hello there\n", "utf-8")
    assert P.load_transcript_file(headerless)[0][1].text == "Hello there"


def test_options_from_workspace(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", "spk1", str(tmp_path))
    ws.set_option("prepare", "whisper_model", "small")
    ws.set_option("prepare", "qc", {"min_snr_db": 5.0})
    o = P.options_from_workspace(ws, language="zh", limit=3)
    assert o.whisper_model == "small" and o.language == "zh" and o.limit == 3
    assert o.qc_opts.min_snr_db == 5.0 and o.text_norm is True
    assert P.options_from_workspace(ws, whisper_model="tiny").whisper_model == "tiny"


def test_audio_metrics_stay_cheap_for_silence_inside() -> None:
    # A segment with a long inner pause keeps a sane speech ratio (no division by zero).
    from voicelab.blocks import qc

    m = qc.text_metrics("", 3.0)
    assert m == {"text_chars": 0, "text_tokens": 0}
    assert np.isfinite(qc.estimate_tokens("..."))


def test_workspace_inside_source_is_not_read(tmp_path: Path, corpus: Corpus) -> None:
    src = tmp_path / "src"
    clip = corpus.clips[1]
    _copy(clip.path, src / clip.path.name).with_suffix(".txt").write_text(clip.text, "utf-8")
    ws = Workspace.init(src / "voice", "spk1", str(src))
    first = P.run_prepare(ws, P.PrepareOptions(asr="transcripts"))
    # Its own clips (now under src/voice/...) are never taken for new sources.
    again = P.run_prepare(ws, P.PrepareOptions(asr="transcripts"))
    assert first.files == again.files == 1 and again.kept == 1


def test_workspace_path_with_blanks_refused(tmp_path: Path, corpus: Corpus) -> None:
    from voicelab.errors import ConfigError

    src = tmp_path / "src"
    _copy(corpus.clips[1].path, src / "a.wav")
    ws = Workspace.init(tmp_path / "my voices" / "ws", "spk1", str(src))
    with pytest.raises(ConfigError, match="whitespace"):
        P.run_prepare(ws, P.PrepareOptions(asr="transcripts"))


def test_discover_follows_links_once(tmp_path: Path, corpus: Corpus) -> None:
    src = tmp_path / "src"
    _copy(corpus.clips[0].path, src / "sub" / "a.wav")
    (src / "sub" / "loop").symlink_to(src, target_is_directory=True)
    (src / "notes.txt").write_text("not audio")
    (src / ".hidden").mkdir()
    _copy(corpus.clips[1].path, src / ".hidden" / "b.wav")
    assert P.discover(src) == [src / "sub" / "a.wav"]


def test_transcripts_keep_files_whole(tmp_path: Path, corpus: Corpus) -> None:
    src = tmp_path / "src"
    long = _copy(corpus.long_path, src / "long.wav")
    long.with_suffix(".lab").write_text(" ".join(corpus.long_sentences), "utf-8")
    clip = _copy(corpus.clips[2].path, src / "c.wav")
    clip.with_suffix(".lab").write_text(corpus.clips[2].text, "utf-8")
    ws = Workspace.init(tmp_path / "ws", "spk1", str(src))
    res = P.run_prepare(ws, P.PrepareOptions(asr="transcripts"))
    assert len(res.segments) == 2 and res.kept == 1
    assert res.by_reason == {"too_long": 1, "too_many_tokens": 1}
    assert any("keep each file whole" in w for w in res.warnings)


def test_damaged_files_are_rows_not_the_end(tmp_path: Path, corpus: Corpus) -> None:
    # Issue 15 item 2: each unreadable file is one 'corrupt' row; the run goes on and no decoder
    # noise or traceback reaches the terminal (the real CLI, so fd 2 is what a user sees).
    from voicelab.testing.corpus import write_damaged

    src, clips = _import_source(tmp_path, corpus)
    for wav in src.rglob("*.wav"):
        text = next(c.text for c in clips if c.path.name == wav.name)
        wav.with_suffix(".txt").write_text(text, encoding="utf-8")
    damaged = write_damaged(src / "damaged")
    for f in damaged.values():
        f.with_suffix(".txt").write_text("some words", encoding="utf-8")
    ws = Workspace.init(tmp_path / "ws", "spk1", str(src))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "voicelab", "-w", str(ws.root), "prepare", "--asr", "transcripts"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for noise in ("Traceback", "mpg123", "MPEG", "aac @"):
        assert noise not in proc.stderr + proc.stdout, proc.stderr
    rows = list(csv.DictReader((ws.prepare_dir / "qc.tsv").open(encoding="utf-8"), delimiter="\t"))
    bad = {Path(r["source"]).name: r["reasons"] for r in rows if r["status"] == "unusable"}
    assert bad == {f.name: "corrupt" for f in damaged.values()}
    assert sum(r["status"] == "kept" for r in rows) == 3


def test_snr_borderline_kept_flagged_and_summary_says_how_to_keep(
    tmp_path: Path, corpus: Corpus
) -> None:
    # Issue 15 item 9, end to end: clean AISHELL read speech is kept; a borderline noisy clip
    # is kept with a 'noisy' flag (first in review.tsv); a very noisy one is excluded, and the
    # summary says how to keep it.
    from voicelab.blocks import audio as au
    from voicelab.errors import EnvironmentProblem
    from voicelab.testing.mandarin import aishell_clips

    try:
        aishell = aishell_clips()
    except EnvironmentProblem as e:
        pytest.skip(f"AISHELL clips unavailable: {e.one_line()}")
    src = tmp_path / "src"
    for path, text in aishell:
        _copy(path, src / path.name).with_suffix(".txt").write_text(text, encoding="utf-8")
    clip = corpus.clips[3]
    x, sr = sf.read(str(clip.path), dtype="float32")
    rng = np.random.default_rng(3)
    for name, snr in (("border", 12.0), ("noisy", 4.0)):
        frames = x[: x.size // 240 * 240].reshape(-1, 240)
        e = (frames.astype(np.float64) ** 2).mean(axis=1)
        power = e[e > e.max() * 1e-4].mean()
        noise = rng.standard_normal(x.size) * np.sqrt(power / 10 ** (snr / 10))
        # White up to 8 kHz only: the band QC measures in (its VAD runs at 16 kHz).
        noise = au.resample(au.resample(noise.astype(np.float32), sr, 16000), 16000, sr)
        noise = np.pad(noise, (0, max(0, x.size - noise.size)))[: x.size]
        noise *= np.sqrt(power / 10 ** (snr / 10) / np.mean(noise.astype(np.float64) ** 2))
        sf.write(str(src / f"{name}.wav"), x + noise, sr, subtype="PCM_16")
        (src / f"{name}.txt").write_text(clip.text, encoding="utf-8")
    ws = Workspace.init(tmp_path / "ws", "spk1", str(src))
    res = P.run_prepare(ws, P.PrepareOptions(asr="transcripts", review=True))
    by_src = {Path(s.source).stem: s for s in res.segments}
    for path, _ in aishell:
        s = by_src[path.stem]
        assert s.status == "kept" and not s.flags, (s.reasons_text, s.qc["snr_db"])
    assert by_src["border"].status == "kept"
    assert [f["code"] for f in by_src["border"].flags] == ["noisy"]
    assert by_src["noisy"].status == "excluded" and by_src["noisy"].reasons_text.startswith(
        "low_snr("
    )
    rows = list(csv.DictReader((ws.prepare_dir / "qc.tsv").open(encoding="utf-8"), delimiter="\t"))
    assert next(r for r in rows if r["source"] == "border.wav")["flags"].startswith("noisy(")
    review = (ws.prepare_dir / "review.tsv").read_text(encoding="utf-8").splitlines()
    kept_rows = [ln for ln in review[1:] if ln.split("\t")[3] == "1"]
    assert "noisy(" in kept_rows[0]  # the flagged kept segment is listed first for review
    lines = "\n".join(res.summary_lines())
    assert "flagged for a listen: noisy 1" in lines
    assert "to keep the 1 low_snr segments" in lines and "min_snr_db = 5" in lines
