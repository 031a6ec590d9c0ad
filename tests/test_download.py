"""``voicelab download`` / ``voicelab models``: verification, repair, the RL switch, offline
errors and the listing, on real local file trees with tiny files.

Repair runs against :class:`LocalFetcher` (a real fetcher of ours that copies from a local
"remote" folder) because no hub serves from disk. Offline errors run the real hub clients
(huggingface_hub, modelscope) against ``HF_HUB_OFFLINE=1`` and a loopback port that refuses
connections. Real downloads run only where the hubs are reachable.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from voicelab import models as dl
from voicelab.errors import EnvironmentProblem, ModelError, VoiceLabError
from voicelab.models import catalogue, ttsfrd
from voicelab.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "http://127.0.0.1:9"  # discard port: connection refused at once

# Tiny stand-ins for every file of the real repository, each a distinct size.
TREE = {
    "cosyvoice3.yaml": 70,
    "llm.pt": 400,
    "llm.rl.pt": 401,
    "flow.pt": 300,
    "hift.pt": 120,
    "campplus.onnx": 90,
    "speech_tokenizer_v3.onnx": 200,
    "speech_tokenizer_v3.batch.onnx": 201,
    "flow.decoder.estimator.fp32.onnx": 150,
    "configuration.json": 47,
    "CosyVoice-BlankEN/config.json": 65,
    "CosyVoice-BlankEN/generation_config.json": 24,
    "CosyVoice-BlankEN/merges.txt": 140,
    "CosyVoice-BlankEN/model.safetensors": 500,
    "CosyVoice-BlankEN/tokenizer_config.json": 128,
    "CosyVoice-BlankEN/vocab.json": 277,
}


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user config, hub cache or endpoint of this machine leaks into a test."""
    monkeypatch.setenv("VOICELAB_CONFIG", str(tmp_path / "cfg" / "config.toml"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    for var in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VOICELAB_HUB_TIMEOUT", "3")


def _content(rel: str, size: int) -> bytes:
    seed = hashlib.sha256(rel.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A local "hub": the repository's layout with tiny files."""
    root = tmp_path / "remote"
    for rel, size in TREE.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_content(rel, size))
    return root


@pytest.fixture
def expected(remote: Path) -> dict[str, dl.FileSpec]:
    """The injectable expected manifest: sizes and sha256 of the tiny files, required flags as
    for the real model."""
    out = {}
    for rel in TREE:
        p = remote / rel
        req = rel in dl.COSYVOICE3_REQUIRED
        out[rel] = dl.FileSpec(
            rel, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest(), None, req
        )
    return out


def _copy_tree(src: Path, dest: Path, skip: tuple[str, ...] = ()) -> Path:
    for p in src.rglob("*"):
        rel = p.relative_to(src).as_posix()
        if p.is_file() and rel not in skip:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(p.read_bytes())
    return dest


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ---- verification --------------------------------------------------------------------------------
def test_verify_complete_missing_truncated_and_wrong_hash(tmp_path, remote, expected):
    model = _copy_tree(remote, tmp_path / "model")
    rep = dl.verify_model_dir(model, expected=expected)
    assert rep.ok and not rep.bad and rep.summary.startswith("complete")
    assert dl.verify_model_dir(model, deep=True, expected=expected).ok

    (model / "hift.pt").unlink()
    (model / "flow.pt").write_bytes(b"short")
    _flip_byte(model / "CosyVoice-BlankEN/model.safetensors")
    rep = dl.verify_model_dir(model, expected=expected)
    assert rep.missing == ["hift.pt"]
    assert rep.wrong_size == ["flow.pt"]
    assert rep.wrong_hash == []  # sizes only without deep
    assert not rep.ok and "missing: hift.pt" in rep.summary and "wrong size: flow.pt" in rep.summary

    deep = dl.verify_model_dir(model, deep=True, expected=expected)
    assert deep.wrong_hash == ["CosyVoice-BlankEN/model.safetensors"]
    assert set(deep.bad) == {"hift.pt", "flow.pt", "CosyVoice-BlankEN/model.safetensors"}
    assert deep.to_dict()["ok"] is False


def test_verify_optional_files_only_when_present(tmp_path, remote, expected):
    model = _copy_tree(
        remote, tmp_path / "model", skip=("llm.rl.pt", "flow.decoder.estimator.fp32.onnx")
    )
    assert dl.verify_model_dir(model, expected=expected).ok
    (model / "llm.rl.pt").write_bytes(b"partial")
    rep = dl.verify_model_dir(model, expected=expected)
    assert rep.ok and rep.bad == ["llm.rl.pt"]  # usable, but the optional file is bad


def test_verify_missing_dir_and_builtin_sizes(tmp_path):
    rep = dl.verify_model_dir(tmp_path / "nothing")
    assert not rep.ok and not rep.exists and rep.summary == "not downloaded"
    # Without a stored manifest the built-in sizes of the real model apply.
    model = tmp_path / "m"
    (model / "CosyVoice-BlankEN").mkdir(parents=True)
    (model / "cosyvoice3.yaml").write_bytes(b"x" * 6_934)
    rep = dl.verify_model_dir(model)
    assert rep.manifest == "built-in sizes"
    assert "cosyvoice3.yaml" not in rep.bad and "llm.pt" in rep.missing


def test_verify_small_files_by_git_blob_id(tmp_path):
    # The hub publishes no sha256 for small non-LFS files, only their git blob id.
    model = tmp_path / "m"
    model.mkdir()
    (model / "cosyvoice3.yaml").write_text("llm: x\n")
    blob = subprocess.run(
        ["git", "hash-object", str(model / "cosyvoice3.yaml")], capture_output=True, text=True
    ).stdout.strip()
    spec = {"cosyvoice3.yaml": dl.FileSpec("cosyvoice3.yaml", 7, git_sha1=blob)}
    assert dl.verify_model_dir(model, deep=True, expected=spec).ok
    (model / "cosyvoice3.yaml").write_text("llm: y\n")
    assert dl.verify_model_dir(model, deep=True, expected=spec).wrong_hash == ["cosyvoice3.yaml"]


# ---- download and repair through a real local fetcher --------------------------------------------
def test_download_fetches_verifies_and_records(tmp_path, remote, expected):
    dest = tmp_path / "pm" / "Fun-CosyVoice3-0.5B"
    f = dl.LocalFetcher(remote, dest)
    res = dl.download_cosyvoice3(dest, fetcher=f, expected=expected)
    required = {r for r, s in expected.items() if s.required}
    # Required files plus the small extras; not the big optional ones (RL LLM, TRT ONNX).
    assert set(f.fetched) >= required and "llm.rl.pt" not in f.fetched
    assert "flow.decoder.estimator.fp32.onnx" not in f.fetched
    assert res.report.ok and res.llm == "base"
    man = json.loads((dest / dl.MANIFEST_FILE).read_text())
    assert man["files"]["llm.pt"]["sha256"] == expected["llm.pt"].sha256
    assert man["verified"] and man["llm"] == "base"

    # Later checks work offline from the stored manifest, hashes included.
    _flip_byte(dest / "campplus.onnx")
    rep = dl.verify_model_dir(dest, deep=True)
    assert rep.manifest.startswith("hub manifest") and rep.wrong_hash == ["campplus.onnx"]


def test_complete_dir_downloads_nothing_and_needs_no_network(tmp_path, remote, expected):
    dest = tmp_path / "model"
    dl.download_cosyvoice3(dest, fetcher=dl.LocalFetcher(remote, dest), expected=expected)
    # A fetcher whose remote does not exist fails on any contact: none happens.
    gone = dl.LocalFetcher(tmp_path / "no-such-remote", dest)
    res = dl.download_cosyvoice3(dest, fetcher=gone, expected=expected)
    assert gone.fetched == [] and res.sync.fetched == [] and not res.sync.contacted_hub
    assert "nothing to download" in res.lines()[0]


def test_repair_refetches_only_the_bad_files(tmp_path, remote, expected):
    dest = tmp_path / "model"
    dl.download_cosyvoice3(dest, fetcher=dl.LocalFetcher(remote, dest), expected=expected)
    inode = {r: (dest / r).stat().st_ino for r in ("llm.pt", "cosyvoice3.yaml")}
    (dest / "hift.pt").unlink()  # missing
    with open(dest / "flow.pt", "r+b") as fh:  # truncated
        fh.truncate(10)
    _flip_byte(dest / "CosyVoice-BlankEN/vocab.json")  # corrupt, same size

    f = dl.LocalFetcher(remote, dest)
    res = dl.download_cosyvoice3(dest, fetcher=f, expected=expected)
    assert sorted(f.fetched) == ["CosyVoice-BlankEN/vocab.json", "flow.pt", "hift.pt"]
    assert res.report.ok and dl.verify_model_dir(dest, deep=True).ok
    assert {r: (dest / r).stat().st_ino for r in inode} == inode  # good files untouched


def test_partial_dir_without_manifest_is_checked_against_the_hub(tmp_path, remote, expected):
    # A dir from upstream's own download script: no manifest; one file corrupt.
    dest = _copy_tree(remote, tmp_path / "model", skip=("llm.rl.pt",))
    _flip_byte(dest / "speech_tokenizer_v3.onnx")
    f = dl.LocalFetcher(remote, dest)
    dl.download_cosyvoice3(dest, fetcher=f, expected=expected)
    assert f.fetched == ["speech_tokenizer_v3.onnx"]


def _publish(remote: Path, specs: dict[str, dl.FileSpec]) -> None:
    """Give the local mirror a published listing (what a hub's file API returns)."""
    files = {r: {"size": s.size, "sha256": s.sha256} for r, s in specs.items()}
    (remote / dl.MANIFEST_FILE).write_text(json.dumps({"files": files}))


def test_interrupted_download_resumes_where_it_stopped(tmp_path, remote, expected):
    dest = tmp_path / "model"
    # The mirror publishes a hash its hift.pt does not have: the run stops there.
    _publish(remote, {**expected, "hift.pt": dl.FileSpec("hift.pt", 120, "0" * 64)})
    f = dl.LocalFetcher(remote, dest)
    with pytest.raises(ModelError, match="still wrong after download"):
        dl.download_cosyvoice3(dest, fetcher=f, expected=expected)
    assert "flow.pt" in f.fetched and "llm.pt" not in f.fetched
    assert not dl.verify_model_dir(dest).ok

    _publish(remote, expected)  # the mirror is fixed
    f2 = dl.LocalFetcher(remote, dest)
    res = dl.download_cosyvoice3(dest, fetcher=f2, expected=expected)
    # Only what was not finished is fetched again (hift.pt was right, only its listing was not).
    assert f2.fetched == [
        "llm.pt",
        "speech_tokenizer_v3.batch.onnx",
        "speech_tokenizer_v3.onnx",
    ]
    assert res.report.ok


def test_copy_from_a_verified_model_dir(tmp_path, remote, expected):
    # A dir VoiceLab verified (RL active) is a mirror for another machine: its stored listing
    # is used, and its kept base LLM is served as llm.pt.
    first = tmp_path / "first"
    dl.download_cosyvoice3(
        first, fetcher=dl.LocalFetcher(remote, first), expected=expected, rl=True
    )
    second = tmp_path / "second"
    res = dl.download_cosyvoice3(second, fetcher=dl.LocalFetcher(first, second), expected=expected)
    assert res.report.ok and res.llm == "base"
    assert (second / "llm.pt").read_bytes() == (remote / "llm.pt").read_bytes()
    assert dl.verify_model_dir(second, deep=True).ok


# ---- the RL switch -------------------------------------------------------------------------------
def test_rl_switch_is_reversible_and_costs_no_disk(tmp_path, remote, expected):
    dest = tmp_path / "model"
    dl.download_cosyvoice3(dest, fetcher=dl.LocalFetcher(remote, dest), expected=expected)
    (dest / "vllm").mkdir()  # upstream's export of the base llm.pt: stale after the switch
    f = dl.LocalFetcher(remote, dest)
    res = dl.download_cosyvoice3(dest, fetcher=f, expected=expected, rl=True)
    assert f.fetched == ["llm.rl.pt"] and res.llm == "rl"
    assert (dest / "llm.pt").read_bytes() == (remote / "llm.rl.pt").read_bytes()
    assert (dest / "llm.base.pt").read_bytes() == (remote / "llm.pt").read_bytes()
    assert os.path.samefile(dest / "llm.pt", dest / "llm.rl.pt")  # hard links
    assert not (dest / "vllm").exists()
    assert json.loads((dest / dl.MANIFEST_FILE).read_text())["llm"] == "rl"
    rep = dl.verify_model_dir(dest, deep=True)
    assert rep.ok and rep.llm == "rl"
    # Three names, two files on disk: switching costs no space.
    assert len({(dest / n).stat().st_ino for n in ("llm.pt", "llm.rl.pt", "llm.base.pt")}) == 2

    # Re-running keeps the choice and fetches nothing.
    f2 = dl.LocalFetcher(remote, dest)
    res = dl.download_cosyvoice3(dest, fetcher=f2, expected=expected)
    assert res.llm == "rl" and f2.fetched == []
    assert (dest / "llm.pt").read_bytes() == (remote / "llm.rl.pt").read_bytes()

    res = dl.download_cosyvoice3(
        dest, fetcher=dl.LocalFetcher(remote, dest), expected=expected, rl=False
    )
    assert res.llm == "base"
    assert (dest / "llm.pt").read_bytes() == (remote / "llm.pt").read_bytes()
    assert dl.verify_model_dir(dest, deep=True).ok


def test_set_rl_needs_the_rl_file(tmp_path, remote, expected):
    dest = tmp_path / "model"
    dl.download_cosyvoice3(dest, fetcher=dl.LocalFetcher(remote, dest), expected=expected)
    with pytest.raises(ModelError, match=r"llm\.rl\.pt"):
        dl.set_rl(dest, True)
    assert dl.set_rl(dest, False) == "base"


# ---- offline: the real clients -------------------------------------------------------------------
def _cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "VOICELAB_NO_PROGRESS": "1", "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "voicelab", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
        cwd=REPO,
    )


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_offline_hf_hub_offline_one_line(tmp_path):
    proc = _cli(
        ["-w", str(tmp_path / "ws"), "download", "cosyvoice3", "--source", "huggingface"],
        {"HF_HUB_OFFLINE": "1"},
    )
    line = _one_error_line(proc)
    assert "HF_HUB_OFFLINE" in line and "https://huggingface.co" in line
    assert "--source modelscope" in line and "hf-mirror.com" in line


def test_unreachable_hf_endpoint_one_line(tmp_path):
    proc = _cli(
        ["-w", str(tmp_path / "ws"), "download", "cosyvoice3", "--source", "huggingface"],
        {"HF_ENDPOINT": LOOPBACK},
    )
    line = _one_error_line(proc)
    assert f"cannot reach Hugging Face at {LOOPBACK}" in line
    assert "--source modelscope" in line and "--endpoint https://hf-mirror.com" in line


def test_unreachable_modelscope_endpoint_one_line(tmp_path):
    pytest.importorskip("modelscope", reason="needs the download extra (modelscope)")
    # One listing attempt instead of the client's four (with back-off) keeps this fast.
    proc = _cli(
        [
            "-w",
            str(tmp_path / "ws"),
            "download",
            "cosyvoice3",
            "--source",
            "modelscope",
            "--endpoint",
            LOOPBACK,
        ],
        {"MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS": "1"},
    )
    line = _one_error_line(proc)
    assert f"cannot reach ModelScope at {LOOPBACK}" in line and "--source huggingface" in line


def test_whisper_offline_one_line(tmp_path):
    proc = _cli(["download", "whisper", "--model", "tiny"], {"HF_HUB_OFFLINE": "1"})
    line = _one_error_line(proc)
    assert "Systran/faster-whisper-tiny" in line and "hf-mirror.com" in line
    assert "--source" not in line  # no other hub carries faster-whisper


def test_hub_errors_classified_from_real_client_exceptions():
    from huggingface_hub import HfApi

    try:
        HfApi(endpoint=LOOPBACK).model_info(dl.COSYVOICE3_REPO, timeout=3)
    except Exception as e:  # the client's own connection error
        assert dl.classify_hub_error(e) == "network"
        err = dl.hub_error(e, "huggingface", LOOPBACK, dl.COSYVOICE3_REPO)
        assert isinstance(err, EnvironmentProblem) and LOOPBACK in err.one_line()
    else:
        pytest.fail("loopback answered")
    assert dl.classify_hub_error(ValueError("a bug")) is None  # bugs keep their traceback


def test_offline_with_complete_sizes_is_usable(tmp_path, remote, expected):
    # Downloaded elsewhere (no manifest), now offline: sizes match, so it is usable; the result
    # says hashes were not checked. The real HF client fails against loopback.
    dest = _copy_tree(remote, tmp_path / "model")
    f = dl.HfFetcher(dl.COSYVOICE3_REPO, dest, endpoint=LOOPBACK)
    res = dl.download_cosyvoice3(dest, fetcher=f, expected=expected)
    assert res.report.ok and "hashes not checked" in res.sync.note
    (dest / "hift.pt").unlink()
    with pytest.raises(EnvironmentProblem, match="cannot reach Hugging Face"):
        dl.download_cosyvoice3(dest, fetcher=f, expected=expected)


# ---- whisper cache: detection and repair ---------------------------------------------------------
def _fake_hf_repo(cache: Path, repo: str, files: dict[str, bytes], commit: str = "a" * 40) -> Path:
    folder = cache / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    for rel, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / rel).symlink_to(os.path.relpath(blob, snap))
    return snap


WHISPER_FILES = {
    "config.json": b'{"alignment_heads": []}',
    "model.bin": b"\x00ct2" * 50,
    "tokenizer.json": b'{"model": {}}',
    "vocabulary.txt": b"a\nb\nc\n",
}


def test_whisper_cache_complete_needs_no_network(tmp_path, monkeypatch):
    cache = Path(os.environ["HF_HUB_CACHE"])
    snap = _fake_hf_repo(cache, "Systran/faster-whisper-tiny", WHISPER_FILES)
    monkeypatch.setenv("HF_ENDPOINT", LOOPBACK)  # any contact would fail
    assert dl.download_whisper("tiny", deep=True) == snap
    infos = dl.list_models(Workspace.open(tmp_path / "ws", must_exist=False))
    (w,) = [i for i in infos if i.kind == "whisper"]
    assert w.name == "Systran/faster-whisper-tiny" and w.complete and w.where == "hf-cache"


def test_whisper_cache_corruption_detected_and_repaired(tmp_path):
    cache = Path(os.environ["HF_HUB_CACHE"])
    files = dict(WHISPER_FILES, **{"vocabulary.txt": b""})  # "Cannot load the target vocabulary"
    snap = _fake_hf_repo(cache, "Systran/faster-whisper-tiny", files)
    blob = (snap / "model.bin").resolve()
    blob.write_bytes(b"\x00ct2" * 49)  # content no longer matches its sha256 name

    check = dl.check_hf_snapshot("Systran/faster-whisper-tiny")
    assert not check.ok and check.bad_files == ["vocabulary.txt"]
    deep = dl.check_hf_snapshot("Systran/faster-whisper-tiny", deep=True)
    assert sorted(deep.bad_files) == ["model.bin", "vocabulary.txt"]

    # Repair drops the broken files (entry and blob) and asks the hub for just those: here the
    # hub is unreachable, so the error names it; the good files stay.
    with pytest.raises(EnvironmentProblem, match=f"cannot reach Hugging Face at {LOOPBACK}"):
        dl.download_whisper("tiny", endpoint=LOOPBACK, deep=True)
    assert not (snap / "model.bin").exists() and not blob.exists()
    assert not (snap / "vocabulary.txt").is_symlink()
    assert (snap / "config.json").is_file() and (snap / "tokenizer.json").is_file()


def test_whisper_unknown_model():
    with pytest.raises(VoiceLabError, match="unknown Whisper model"):
        dl.whisper_repo("enormous")
    assert dl.whisper_repo("large-v3") == "Systran/faster-whisper-large-v3"


# ---- ttsfrd --------------------------------------------------------------------------------------
def _zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_ttsfrd_unzips_and_never_installs(tmp_path):
    remote = tmp_path / "ttsfrd-remote"
    remote.mkdir()
    _zip(remote / "resource.zip", {"resource/festival/a.txt": b"x", "resource/readme": b"y"})
    (remote / "ttsfrd-0.4.2-cp310-cp310-linux_x86_64.whl").write_bytes(b"not run")
    (remote / "ttsfrd_dependency-0.1-py3-none-any.whl").write_bytes(b"not run")
    dest = tmp_path / "pm" / dl.TTSFRD_DIR_NAME
    vendor = tmp_path / "vendor" / "CosyVoice"
    res = dl.download_ttsfrd(dest, fetcher=dl.LocalFetcher(remote, dest), vendor_dir=vendor)
    assert (dest / "resource" / "festival" / "a.txt").read_bytes() == b"x"
    assert res.pip_command.startswith("pip install ") and "ttsfrd_dependency" in res.pip_command
    assert res.pip_command.index("dependency") < res.pip_command.index("ttsfrd-0.4.2")
    link = vendor / "pretrained_models" / dl.TTSFRD_DIR_NAME / "resource"
    assert link.is_symlink() and (link / "readme").read_bytes() == b"y"
    assert any("pip install" in ln for ln in res.lines())


def test_ttsfrd_zip_slip_refused(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    _zip(d / "resource.zip", {"resource/ok": b"1", "../evil": b"2"})
    with pytest.raises(ModelError, match="unsafe path"):
        dl.unpack_ttsfrd_resource(d)
    assert not (tmp_path / "evil").exists()


def test_ttsfrd_zip_size_capped(tmp_path, monkeypatch):
    # Issue 15 item 28: an archive that unpacks to far more than it weighs is refused and
    # nothing half-unpacked is left.
    d = tmp_path / "t"
    d.mkdir()
    with zipfile.ZipFile(d / "resource.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ("resource/a", "resource/b"):
            zf.writestr(name, b"\0" * (3 << 20))
    assert (d / "resource.zip").stat().st_size < 100_000
    with pytest.raises(ModelError, match="unpacks to more than"):
        ttsfrd._safe_unzip(d / "resource.zip", tmp_path / "out", max_bytes=4 << 20)
    monkeypatch.setattr(ttsfrd._safe_unzip, "__defaults__", (4 << 20,))
    with pytest.raises(ModelError, match="unpacks to more than"):
        dl.unpack_ttsfrd_resource(d)
    assert not (d / "resource").exists() and not (d / ".resource.tmp").exists()


# ---- sources and the user config -----------------------------------------------------------------
def test_source_resolution_and_saved_settings(monkeypatch):
    assert dl.resolve_source() == ("modelscope", None)
    assert dl.resolve_source(endpoint="https://hf-mirror.com/") == (
        "huggingface",
        "https://hf-mirror.com",
    )
    path = dl.save_download_settings("huggingface", "https://hf-mirror.com")
    assert "hf_endpoint" in path.read_text()
    assert dl.resolve_source() == ("huggingface", "https://hf-mirror.com")
    assert dl.hf_endpoint() == "https://hf-mirror.com"
    monkeypatch.setenv("HF_ENDPOINT", "https://example.invalid")  # env beats the config
    assert dl.resolve_source() == ("huggingface", None)
    assert dl.hf_endpoint() == "https://example.invalid"
    assert dl.resolve_source("modelscope") == ("modelscope", None)
    with pytest.raises(VoiceLabError, match="unknown download source"):
        dl.resolve_source("ftp")


# ---- listing -------------------------------------------------------------------------------------
def test_list_models_bases_voices_and_sizes(tmp_path, remote, expected):
    ws = Workspace.init(tmp_path / "ws", "spk1")
    base = ws.base_model_dir
    dl.download_cosyvoice3(base, fetcher=dl.LocalFetcher(remote, base), expected=expected)

    def derive(name: str, provenance: dict | None) -> Path:
        v = ws.pretrained_dir / name
        for p in base.rglob("*"):
            rel = p.relative_to(base)
            if p.is_file() and rel.name not in ("llm.pt", dl.MANIFEST_FILE):
                (v / rel).parent.mkdir(parents=True, exist_ok=True)
                os.link(p, v / rel)
        (v / "llm.pt").write_bytes(b"trained" * 10)
        if provenance is not None:
            (v / dl.VOICE_PROVENANCE).write_text(json.dumps(provenance))
        return v

    derive("Fun-CosyVoice3-0.5B-spk1-sft", {"base": dl.BASE_MODEL_NAME})
    derive("by-links-only", None)
    broken = derive("broken-voice", {"base": {"path": str(base)}})
    (broken / "hift.pt").unlink()

    infos = {i.name: i for i in dl.list_models(ws)}
    b = infos[dl.BASE_MODEL_NAME]
    assert (
        b.kind == "base"
        and b.complete
        and b.size_bytes >= sum(s.size for s in expected.values() if s.required)
    )
    v = infos["Fun-CosyVoice3-0.5B-spk1-sft"]
    assert v.kind == "voice" and v.base == dl.BASE_MODEL_NAME and v.complete
    assert 0 < v.shared_bytes < v.size_bytes
    assert (
        infos["by-links-only"].kind == "voice" and infos["by-links-only"].base == dl.BASE_MODEL_NAME
    )
    assert infos["broken-voice"].complete is False and "hift.pt" in infos["broken-voice"].detail
    # Hard-linked bytes count once across the folder.
    paths = [i.path for i in infos.values() if i.where == "pretrained"]
    assert dl.disk_usage(paths) < sum(
        i.size_bytes for i in infos.values() if i.where == "pretrained"
    )


def test_verify_voice_dir_with_export_provenance(tmp_path, remote, expected):
    # The shape `voicelab export` writes: base_model.files lists the base files it used.
    base = tmp_path / "pm" / dl.BASE_MODEL_NAME
    dl.download_cosyvoice3(base, fetcher=dl.LocalFetcher(remote, base), expected=expected)
    voice = _copy_tree(base, tmp_path / "pm" / "voice", skip=(dl.MANIFEST_FILE,))
    files = {
        r: {"bytes": (base / r).stat().st_size, "sha256": s.sha256}
        for r, s in expected.items()
        if (base / r).is_file()
    }
    (voice / "llm.pt").write_bytes(b"fine-tuned")  # trained: any size
    prov = {"base_model": {"path": str(base), "name": base.name, "files": files}}
    (voice / dl.VOICE_PROVENANCE).write_text(json.dumps(prov))
    rep = dl.verify_model_dir(voice, deep=True)
    assert rep.ok and rep.llm == "trained" and "voicelab.json" in rep.manifest
    _flip_byte(voice / "campplus.onnx")
    (voice / "flow.pt").unlink()
    rep = dl.verify_model_dir(voice, deep=True)
    assert rep.wrong_hash == ["campplus.onnx"] and rep.missing == ["flow.pt"]


def test_models_cli_json(tmp_path, remote, expected):
    from click.testing import CliRunner

    from voicelab.cli.main import cli

    ws = Workspace.init(tmp_path / "ws", "spk1")
    base = ws.base_model_dir
    dl.download_cosyvoice3(base, fetcher=dl.LocalFetcher(remote, base), expected=expected)
    out = CliRunner().invoke(cli, ["-w", str(ws.root), "models", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    (m,) = [m for m in data["models"] if m["kind"] == "base"]
    assert m["complete"] is True and m["name"] == dl.BASE_MODEL_NAME
    text = CliRunner().invoke(cli, ["-w", str(ws.root), "models", "--no-caches"])
    assert text.exit_code == 0 and "complete" in text.stdout


# ---- the real huggingface_hub client against a loopback hub ----------------------------------
def _loopback_hub(root: Path, repo: str, commit: str = "c" * 40):
    """Serve ``root`` over the few Hugging Face endpoints the client uses for a download (repo
    info with file metadata, HEAD/GET of resolve URLs), on 127.0.0.1. A stand-in for the remote
    service, so HfFetcher runs the real client end to end without a network."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import unquote, urlparse

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = urlparse(self.path).path
            if path.startswith(f"/api/models/{repo}/tree/"):  # snapshot_download's listing
                tree = []
                for p in sorted(root.rglob("*")):
                    if p.is_file():
                        d = p.read_bytes()
                        sha = hashlib.sha256(d).hexdigest()
                        lfs = {"oid": sha, "size": len(d), "pointerSize": 1}
                        rel = p.relative_to(root).as_posix()
                        entry = {"type": "file", "path": rel, "size": len(d), "oid": sha[:40]}
                        tree.append({**entry, "lfs": lfs})
                self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
                return
            if path.startswith(f"/api/models/{repo}"):
                sib = []
                for p in sorted(root.rglob("*")):
                    if p.is_file():
                        d = p.read_bytes()
                        lfs = {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
                        rel = p.relative_to(root).as_posix()
                        sib.append(
                            {"rfilename": rel, "size": len(d), "lfs": {**lfs, "pointerSize": 1}}
                        )
                body = json.dumps({"id": repo, "sha": commit, "siblings": sib}).encode()
                self._send(200, body, {"Content-Type": "application/json"})
                return
            self._file(path, head=False)

        def do_HEAD(self) -> None:
            self._file(urlparse(self.path).path, head=True)

        def _file(self, path: str, head: bool) -> None:
            prefix = f"/{repo}/resolve/"
            rel = unquote(path[len(prefix) :].partition("/")[2]) if path.startswith(prefix) else ""
            p = root / rel
            if not rel or not p.is_file():
                self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                return
            d = p.read_bytes()
            etag = f'"{hashlib.sha256(d).hexdigest()}"'
            start = (
                int(self.headers["Range"].split("=")[1].split("-")[0])
                if (self.headers.get("Range") and not head)
                else 0
            )
            hdr = {"X-Repo-Commit": commit, "ETag": etag}
            self._send(206 if start else 200, b"" if head else d[start:], hdr, len(d) - start)

        def _send(self, code: int, body: bytes, headers: dict, length: int | None = None) -> None:
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_hf_client_download_and_repair_through_loopback_hub(tmp_path, remote, expected):
    srv = _loopback_hub(remote, dl.COSYVOICE3_REPO)
    try:
        ep = f"http://127.0.0.1:{srv.server_address[1]}"
        dest = tmp_path / "model"
        res = dl.download_cosyvoice3(dest, source="huggingface", endpoint=ep, expected=expected)
        assert res.report.ok and res.source == "huggingface" and res.endpoint == ep
        assert set(res.sync.fetched) >= set(dl.COSYVOICE3_REQUIRED)
        man = json.loads((dest / dl.MANIFEST_FILE).read_text())
        assert man["revision"] == "c" * 40 and man["endpoint"] == ep
        assert dl.verify_model_dir(dest, deep=True).ok

        with open(dest / "flow.pt", "r+b") as fh:
            fh.truncate(5)
        res = dl.download_cosyvoice3(dest, source="huggingface", endpoint=ep, expected=expected)
        assert res.sync.fetched == ["flow.pt"] and dl.verify_model_dir(dest, deep=True).ok
    finally:
        srv.shutdown()


def test_cli_from_dir_and_check(tmp_path, remote, expected, monkeypatch):
    from click.testing import CliRunner

    from voicelab.cli.main import cli

    # The CLI checks against the catalogue; here that is the stand-in files' (pins included).
    monkeypatch.setattr(catalogue, "COSYVOICE3_FILES", expected)

    # A model dir verified on another machine (its manifest carries the expected hashes).
    other = tmp_path / "other"
    dl.download_cosyvoice3(other, fetcher=dl.LocalFetcher(remote, other), expected=expected)
    ws = tmp_path / "ws"
    run = CliRunner().invoke
    out = run(cli, ["-w", str(ws), "download", "cosyvoice3", "--from-dir", str(other)])
    assert out.exit_code == 0, out.output
    assert "complete" in out.stdout and "hashes verified" in out.stdout
    model = ws / "pretrained_models" / dl.BASE_MODEL_NAME
    assert run(cli, ["-w", str(ws), "download", "cosyvoice3", "--check"]).exit_code == 0
    _flip_byte(model / "hift.pt")
    out = run(cli, ["-w", str(ws), "download", "cosyvoice3", "--check"])
    assert out.exit_code == 1 and "wrong hash: hift.pt" in out.stdout


def test_whisper_download_and_repair_through_loopback_hub(tmp_path):
    remote = tmp_path / "fw"
    remote.mkdir()
    for rel, data in WHISPER_FILES.items():
        (remote / rel).write_bytes(data)
    (remote / "README.md").write_text("not needed by faster-whisper")
    srv = _loopback_hub(remote, "Systran/faster-whisper-tiny")
    cache = Path(os.environ["HF_HUB_CACHE"])  # named: the client fixes its default at import
    try:
        ep = f"http://127.0.0.1:{srv.server_address[1]}"
        snap = dl.download_whisper("tiny", endpoint=ep, cache_dir=cache)
        assert sorted(p.name for p in snap.iterdir()) == sorted(WHISPER_FILES)
        assert dl.check_hf_snapshot("Systran/faster-whisper-tiny", cache_dir=cache, deep=True).ok
        (snap / "vocabulary.txt").write_bytes(b"")  # the notes' broken cache
        snap = dl.download_whisper("tiny", endpoint=ep, cache_dir=cache)
        assert (snap / "vocabulary.txt").read_bytes() == WHISPER_FILES["vocabulary.txt"]
    finally:
        srv.shutdown()


def _loopback_modelscope(root: Path, repo: str):
    """The ModelScope endpoints the client uses for a download (file list with sha256, file by
    path), serving ``root`` on 127.0.0.1."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlparse

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            u = urlparse(self.path)
            q = parse_qs(u.query)
            if u.path == f"/api/v1/models/{repo}/repo/files":
                files = [
                    {
                        "Path": p.relative_to(root).as_posix(),
                        "Name": p.name,
                        "Size": p.stat().st_size,
                        "Sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                        "Type": "blob",
                    }
                    for p in sorted(root.rglob("*"))
                    if p.is_file()
                ]
                body = json.dumps({"Code": 200, "Success": True, "Data": {"Files": files}})
                self._send(200, body.encode())
            elif u.path == f"/api/v1/models/{repo}/repo" and "FilePath" in q:
                p = root / q["FilePath"][0]
                self._send(200, p.read_bytes()) if p.is_file() else self._send(404, b"{}")
            else:  # anything else the client asks (acceleration info ...): nothing special
                self._send(200, json.dumps({"Code": 200, "Success": True, "Data": {}}).encode())

        def _send(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_modelscope_client_download_and_repair_through_loopback_hub(tmp_path, remote, expected):
    pytest.importorskip("modelscope", reason="needs the download extra (modelscope)")
    srv = _loopback_modelscope(remote, dl.COSYVOICE3_REPO)
    try:
        ep = f"http://127.0.0.1:{srv.server_address[1]}"
        dest = tmp_path / "model"
        res = dl.download_cosyvoice3(dest, source="modelscope", endpoint=ep, expected=expected)
        assert res.report.ok and res.source == "modelscope" and res.endpoint == ep
        assert set(res.sync.fetched) >= set(dl.COSYVOICE3_REQUIRED)
        assert dl.verify_model_dir(dest, deep=True).ok
        _flip_byte(dest / "hift.pt")
        res = dl.download_cosyvoice3(dest, source="modelscope", endpoint=ep, expected=expected)
        assert res.sync.fetched == ["hift.pt"] and dl.verify_model_dir(dest, deep=True).ok
    finally:
        srv.shutdown()


def test_funasr_download_repair_and_listing_through_loopback_hub(tmp_path):
    pytest.importorskip("modelscope", reason="needs the download extra (modelscope)")
    remote = tmp_path / "sv"
    remote.mkdir()
    (remote / "model.pt").write_bytes(b"m" * 100)
    (remote / "configuration.json").write_text("{}")
    srv = _loopback_modelscope(remote, "iic/SenseVoiceSmall")
    try:
        ep = f"http://127.0.0.1:{srv.server_address[1]}"
        # The client keeps the cache dir it saw first in a process: name this test's.
        cache = os.environ["MODELSCOPE_CACHE"]
        path = dl.download_funasr("sensevoice", endpoint=ep, cache_dir=cache)
        assert (path / "model.pt").read_bytes() == b"m" * 100
        assert str(path).startswith(cache)
        (path / "model.pt").write_bytes(b"")  # an empty model file: fetched again
        path = dl.download_funasr("sensevoice", endpoint=ep, cache_dir=cache)
        assert (path / "model.pt").stat().st_size == 100
    finally:
        srv.shutdown()
    infos = dl.list_models(Workspace.open(tmp_path / "ws", must_exist=False))
    (f,) = [i for i in infos if i.kind == "funasr"]
    assert f.name == "iic/SenseVoiceSmall" and f.complete and f.where == "modelscope-cache"


# ---- real downloads, where a hub is reachable ----------------------------------------------------
def _reachable(host: str) -> str | None:
    try:
        with socket.create_connection((host, 443), timeout=3):
            return None
    except OSError as e:
        return f"{host}:443 not reachable from here ({e})"


@pytest.mark.slow
def test_real_download_huggingface(tmp_path):
    why = _reachable("huggingface.co")
    if why:
        pytest.skip(f"no network: {why}")
    dest = tmp_path / "w"
    f = dl.HfFetcher("Systran/faster-whisper-tiny", dest)
    res = dl.sync_model_dir(dest, f, builtin={}, want={"config.json"})
    assert "config.json" in res.fetched and res.report is not None
    assert json.loads((dest / dl.MANIFEST_FILE).read_text())["revision"]
    again = dl.sync_model_dir(
        dest, dl.HfFetcher("Systran/faster-whisper-tiny", dest), {}, {"config.json"}
    )
    assert again.fetched == []


@pytest.mark.slow
def test_real_download_modelscope(tmp_path):
    why = _reachable("modelscope.cn")
    if why:
        pytest.skip(f"no network: {why}")
    dest = tmp_path / "vad"
    f = dl.ModelScopeFetcher(dl.FUNASR_MODELS["fsmn-vad"], dest)
    res = dl.sync_model_dir(dest, f, builtin={}, want={"configuration.json"})
    assert "configuration.json" in res.fetched
    assert (dest / "configuration.json").stat().st_size > 0
