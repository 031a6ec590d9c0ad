"""``voicelab features`` on generated speech with the tiny ONNX stand-ins (real onnxruntime)."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from speech_corpus import LONG_UTT, write_kaldi
from voicelab.blocks.fbank import num_whisper_frames, whisper_log_mel
from voicelab.blocks.onnxrt import CPU, create_session
from voicelab.errors import ModelError
from voicelab.stages import features as feat
from voicelab.stages.features import frontend
from voicelab.state import load_record
from voicelab.workspace import Workspace


@pytest.fixture
def ws(tmp_workspace: Workspace, speech_set: dict[str, list]) -> Workspace:
    write_kaldi(tmp_workspace, speech_set)
    return tmp_workspace


def _load(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True)


def test_formats_dtypes_and_speaker_mean(ws: Workspace, onnx_dir: Path, speech_set: dict) -> None:
    res = feat.run_features(ws, feat.FeaturesOptions(onnx_dir=onnx_dir, device="cpu"))
    assert not res.skipped
    assert "CPU" in res.provider
    for split, items in speech_set.items():
        d = ws.split_dir(split)
        emb, spk, tok = (
            _load(d / n) for n in (feat.EMBEDDING_FILE, feat.SPK_EMBEDDING_FILE, feat.TOKEN_FILE)
        )
        expected = sorted(u for u, *_ in items if u != LONG_UTT)
        assert list(emb) == expected and list(tok) == expected  # wav.scp order (sorted by id)
        for u in expected:
            assert isinstance(emb[u], list) and len(emb[u]) == 192
            assert all(type(v) is float for v in emb[u])
            assert isinstance(tok[u], list) and all(type(t) is int for t in tok[u])
            assert all(0 <= t < 6561 for t in tok[u])
        spks = {s for _, _, _, s in items}
        assert set(spk) == spks
        for s in spks:
            vecs = np.array([emb[u] for u, _, _, s2 in items if s2 == s and u in emb])
            assert isinstance(spk[s], list) and len(spk[s]) == 192
            np.testing.assert_allclose(spk[s], vecs.mean(axis=0), atol=1e-6)
    # distinct speakers give distinct vectors (the stand-in is not a plain mean)
    spk = _load(ws.split_dir("train") / feat.SPK_EMBEDDING_FILE)
    a, b = np.array(spk["spkA"]), np.array(spk["spkB"])
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert cos < 0.999
    rec = load_record(ws, "features")
    assert rec is not None and rec.status == "done" and rec.figures["excluded"] == 1


def test_padding_rule_for_every_utterance(ws: Workspace, onnx_dir: Path, speech_set: dict) -> None:
    import soundfile as sf

    feat.run_features(ws, feat.FeaturesOptions(onnx_dir=onnx_dir, device="cpu"))
    sess = create_session(onnx_dir / feat.TOKENIZER, "cpu")
    checked = 0
    for split, items in speech_set.items():
        tok = _load(ws.split_dir(split) / feat.TOKEN_FILE)
        for utt, wav, *_ in items:
            if utt == LONG_UTT:
                continue
            x, sr = sf.read(wav, dtype="float32")
            n24 = len(frontend._resample(x, sr, 24000))
            padded = math.ceil(n24 / 960) * 960
            assert len(tok[utt]) == padded // 960, utt
            mel_frames_24k = padded // 480  # the flow's mel: hop 480 at 24 kHz
            assert 2 * len(tok[utt]) == mel_frames_24k, utt
            # the tokenizer saw exactly 4 whisper frames per token
            fe = feat.front_end(x, sr)
            assert fe.padded24 == padded and fe.mel.shape[1] == 4 * len(tok[utt])
            assert num_whisper_frames(padded * 2 // 3) == fe.mel.shape[1]
            # and the tokens are the model's output on that log-mel
            x16 = feat.to_16k_exact(feat.to_24k_padded(x, sr)[0])
            mel = whisper_log_mel(x16)
            ids = sess.run({"feats": mel[None], "feats_length": np.array([mel.shape[1]], np.int32)})
            assert ids[0][0].tolist() == tok[utt], utt
            checked += 1
    assert checked == sum(len(v) for v in speech_set.values()) - 1


def test_over_30s_excluded_with_reason(ws: Workspace, onnx_dir: Path) -> None:
    res = feat.run_features(ws, feat.FeaturesOptions(onnx_dir=onnx_dir, device="cpu"))
    [ex] = res.excluded
    assert ex.utt == LONG_UTT and ex.split == "train"
    assert "30 s" in ex.reason and "31.5 s" in ex.reason
    assert LONG_UTT in res.summary()
    for name in (feat.EMBEDDING_FILE, feat.TOKEN_FILE):
        assert LONG_UTT not in _load(ws.split_dir("train") / name)


def test_cpu_fallback_when_cuda_is_asked_for(onnx_dir: Path, ws: Workspace) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        probe = create_session(onnx_dir / feat.CAMPPLUS, "cuda")
        if probe.provider != CPU:
            pytest.skip("CUDA works here: nothing to fall back from")
    s = create_session(onnx_dir / feat.CAMPPLUS, "cuda")
    assert s.provider == CPU and s.note and "CPU" in s.note
    out = s.run({"input": np.zeros((1, 50, 80), np.float32)})[0]
    assert out.shape == (1, 192)
    res = feat.run_features(ws, feat.FeaturesOptions(onnx_dir=onnx_dir, device="cuda"))
    assert "CPU" in res.provider and res.notes


def test_batched_tokens_equal_single(
    ws: Workspace, onnx_dir: Path, tmp_path: Path, speech_set: dict
) -> None:
    feat.run_features(ws, feat.FeaturesOptions(onnx_dir=onnx_dir, device="cpu", token_batch=1))
    single = _load(ws.split_dir("train") / feat.TOKEN_FILE)
    ws2 = Workspace.init(tmp_path / "ws2", "spk1")
    write_kaldi(ws2, speech_set)
    res = feat.run_features(
        ws2, feat.FeaturesOptions(onnx_dir=onnx_dir, device="cpu", token_batch=4, threads=2)
    )
    assert res.computed == sum(len(v) for v in speech_set.values())
    assert _load(ws2.split_dir("train") / feat.TOKEN_FILE) == single
    assert _load(ws2.split_dir("train") / feat.EMBEDDING_FILE) == _load(
        ws.split_dir("train") / feat.EMBEDDING_FILE
    )


def test_incremental_rerun(ws: Workspace, onnx_dir: Path, speech_set: dict) -> None:
    import soundfile as sf

    opts = feat.FeaturesOptions(onnx_dir=onnx_dir, device="cpu")
    first = feat.run_features(ws, opts)
    assert first.computed == sum(len(v) for v in speech_set.values())
    again = feat.run_features(ws, opts)
    assert again.skipped
    # change one utterance's audio: only it is recomputed
    utt, wav, *_ = speech_set["train"][0]
    changed = ws.root / "changed.wav"
    x, sr = sf.read(wav, dtype="float32")
    sf.write(changed, x[: len(x) // 2], sr, subtype="PCM_16")
    scp = ws.split_dir("train") / "wav.scp"
    scp.write_text(scp.read_text().replace(wav, str(changed)))
    third = feat.run_features(ws, opts)
    assert (third.computed, third.skipped) == (1, False)
    tok = _load(ws.split_dir("train") / feat.TOKEN_FILE)
    assert len(tok[utt]) == math.ceil(len(x) // 2 / 960)


def test_missing_model_is_a_one_line_error(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"campplus\.onnx"):
        feat.run_features(ws, feat.FeaturesOptions(onnx_dir=tmp_path, device="cpu"))


_CHILD = """
import sys, time
from voicelab.stages import features
from voicelab.stages.features import cache, jobs
from voicelab.workspace import Workspace
cache.CACHE_SAVE_SECONDS = 0.05
real = jobs._compute
def slowed(models, jobs):  # the real computation, made slow enough to be interrupted
    out = real(models, jobs)
    time.sleep(0.3)
    return out
jobs._compute = slowed
ws = Workspace.open(sys.argv[1])
features.run_features(ws, features.FeaturesOptions(onnx_dir=sys.argv[2], device="cpu", threads=1))
print("finished")
"""


def test_resume_after_kill(ws: Workspace, onnx_dir: Path, speech_set: dict, tmp_path: Path) -> None:
    total = sum(len(v) for v in speech_set.values())
    cache_file = ws.dataset_dir / feat.CACHE_NAME
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(ws.root), str(onnx_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "VOICELAB_NO_PROGRESS": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            data = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
            if len(data.get("entries", {})) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail(f"child ended early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = len(json.loads(cache_file.read_text())["entries"])
    assert 3 <= done_before < total
    rec = load_record(ws, "features")
    assert rec is not None and rec.status == "running"  # killed mid-run
    res = feat.run_features(ws, feat.FeaturesOptions(onnx_dir=onnx_dir, device="cpu"))
    assert res.computed == total - done_before and res.cached == done_before
    # same outputs as an uninterrupted run
    ws2 = Workspace.init(tmp_path / "clean", "spk1")
    write_kaldi(ws2, speech_set)
    feat.run_features(ws2, feat.FeaturesOptions(onnx_dir=onnx_dir, device="cpu"))
    for split in ("train", "dev"):
        for name in (feat.EMBEDDING_FILE, feat.SPK_EMBEDDING_FILE, feat.TOKEN_FILE):
            assert _load(ws.split_dir(split) / name) == _load(ws2.split_dir(split) / name)


def test_m4a_in_a_users_wav_scp(ws: Workspace, onnx_dir: Path, tmp_path: Path) -> None:
    # Issue 15 item 12: one audio reader for every stage. prepare decodes m4a, so features (and
    # the bytes pack hands upstream's soundfile reader) must too.
    import shutil

    import soundfile as sf

    from voicelab.blocks import audio as au

    d = ws.split_dir("train")
    lines = (d / "wav.scp").read_text().splitlines()
    utt, wav = lines[0].split(" ", 1)
    m4a = tmp_path / "first.m4a"
    subprocess.run(
        [shutil.which("ffmpeg") or "ffmpeg", "-nostdin", "-v", "error", "-i", wav, str(m4a)],
        check=True, timeout=120,
    )  # fmt: skip
    (d / "wav.scp").write_text("\n".join([f"{utt} {m4a}", *lines[1:]]) + "\n")
    res = feat.run_features(ws, feat.FeaturesOptions(onnx_dir=onnx_dir, device="cpu"))
    assert utt not in {e.utt for e in res.excluded}, res.excluded
    assert utt in _load(d / feat.TOKEN_FILE)
    x, sr = sf.read(io.BytesIO(au.upstream_bytes(m4a)), dtype="float32")
    ref, ref_sr = feat.load_audio(m4a)
    assert sr == ref_sr and np.array_equal(x, ref)  # the same samples features saw


def test_utf8_bom_in_users_lists(ws: Workspace, onnx_dir: Path, tmp_path: Path) -> None:
    # Issue 15 item 11: Notepad's BOM must not become part of the first id (a phantom speaker
    # '\ufeffspkA' in spk2embedding.pt and the parquet).
    from voicelab.stages.train import read_list

    d = ws.split_dir("train")
    for name in ("wav.scp", "text", "utt2spk", "instruct"):
        (d / name).write_bytes(b"\xef\xbb\xbf" + (d / name).read_bytes())
    feat.run_features(ws, feat.FeaturesOptions(onnx_dir=onnx_dir, device="cpu"))
    spk = _load(d / feat.SPK_EMBEDDING_FILE)
    tok = _load(d / feat.TOKEN_FILE)
    assert not [k for k in (*spk, *tok) if "\ufeff" in k], (list(spk), list(tok)[:3])
    assert set(spk) == {"spkA", "spkB"}
    lst = tmp_path / "data.list"
    lst.write_bytes(b"\xef\xbb\xbf/x/a.tar\n/x/b.tar\n")
    assert read_list(lst) == [Path("/x/a.tar"), Path("/x/b.tar")]
