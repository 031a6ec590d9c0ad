"""Model integrity (issue 15 item 27): the catalogue pins the hub revision and the sha256 of the
code-like files (YAML that hyperpyyaml instantiates, JSON and tokenizer files); a mirror serving
anything else is refused in one line and leaves nothing behind. Real files through LocalFetcher
(a folder mirror, what --from-dir uses)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from voicelab import models as dl
from voicelab.errors import ModelError

FILES = {
    "cosyvoice3.yaml": b"llm: !new:cosyvoice.llm.llm.CosyVoice3LM\n",
    "llm.pt": b"L" * 40,
    "flow.pt": b"F" * 30,
    "hift.pt": b"H" * 20,
    "campplus.onnx": b"C" * 10,
    "speech_tokenizer_v3.onnx": b"S" * 12,
    "speech_tokenizer_v3.batch.onnx": b"B" * 13,
    "CosyVoice-BlankEN/config.json": b'{"model_type": "qwen2"}',
    "CosyVoice-BlankEN/generation_config.json": b"{}",
    "CosyVoice-BlankEN/merges.txt": b"a b\n",
    "CosyVoice-BlankEN/model.safetensors": b"M" * 50,
    "CosyVoice-BlankEN/tokenizer_config.json": b'{"x": 1}',
    "CosyVoice-BlankEN/vocab.json": b'{"a": 0}',
}
EVIL = b"llm: !name:os.system ['touch pwned']\n"  # same role, other content


def _mirror(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture
def catalogue() -> dict[str, dl.FileSpec]:
    """Our catalogue for the stand-in files: sizes, required flags as for the real model, and
    sha256 (the pins of the code-like ones)."""
    return {
        rel: dl.FileSpec(
            rel,
            len(data),
            hashlib.sha256(data).hexdigest(),
            required=rel in dl.COSYVOICE3_REQUIRED,
        )
        for rel, data in FILES.items()
    }


def test_the_real_catalogue_pins_revision_and_code_like_files() -> None:
    assert re.fullmatch(r"[0-9a-f]{40}", dl.COSYVOICE3_HF_REVISION)
    code_like = [r for r in dl.COSYVOICE3_FILES if r.endswith((".yaml", ".json", ".txt"))]
    assert sorted(code_like) == sorted(dl.PINNED_FILES)
    for rel in code_like:
        assert re.fullmatch(r"[0-9a-f]{64}", dl.COSYVOICE3_FILES[rel].sha256 or ""), rel


def test_a_listing_that_disagrees_with_a_pin_is_refused(tmp_path: Path, catalogue) -> None:
    remote = _mirror(tmp_path / "mirror", {**FILES, "cosyvoice3.yaml": EVIL})
    dest = tmp_path / "model"
    with pytest.raises(ModelError) as e:
        dl.download_cosyvoice3(dest, fetcher=dl.LocalFetcher(remote, dest), expected=catalogue)
    line = e.value.one_line()
    assert "cosyvoice3.yaml" in line and "pins" in line and "\n" not in line
    assert not (dest / "cosyvoice3.yaml").exists()


def test_a_mirror_lying_in_its_listing_is_caught_after_download(tmp_path: Path, catalogue) -> None:
    """The listing names our hash but the bytes differ: refused, and the file is removed."""
    remote = _mirror(tmp_path / "mirror", {**FILES, "cosyvoice3.yaml": EVIL})
    listing = {
        r: {"size": s.size, "sha256": s.sha256} for r, s in catalogue.items() if r != "llm.pt"
    }
    listing["cosyvoice3.yaml"]["size"] = len(EVIL)
    listing["llm.pt"] = {"size": len(FILES["llm.pt"])}
    (remote / dl.MANIFEST_FILE).write_text(json.dumps({"files": listing}))
    dest = tmp_path / "model"
    spec = {**catalogue, "cosyvoice3.yaml": dl.FileSpec(
        "cosyvoice3.yaml", len(EVIL), catalogue["cosyvoice3.yaml"].sha256
    )}  # fmt: skip
    with pytest.raises(ModelError, match="not the file VoiceLab pins"):
        dl.download_cosyvoice3(dest, fetcher=dl.LocalFetcher(remote, dest), expected=spec)
    assert not (dest / "cosyvoice3.yaml").exists()


def test_a_code_like_file_swapped_after_download_fails_the_check(tmp_path: Path, catalogue) -> None:
    remote = _mirror(tmp_path / "mirror", FILES)
    dest = tmp_path / "model"
    dl.download_cosyvoice3(dest, fetcher=dl.LocalFetcher(remote, dest), expected=catalogue)
    assert dl.verify_model_dir(dest, expected=catalogue).ok
    swapped = b"llm: !new:cosyvoice.llm.llm.CosyVoice3XX\n"  # same size, other content
    assert len(swapped) == len(FILES["cosyvoice3.yaml"])
    (dest / "cosyvoice3.yaml").write_bytes(swapped)
    # not --deep: pins are always hashed; the manifest recorded the pins the download used
    for report in (dl.verify_model_dir(dest, expected=catalogue), dl.verify_model_dir(dest)):
        assert not report.ok and "cosyvoice3.yaml" in report.wrong_hash


def test_the_hub_listing_never_replaces_a_pin(tmp_path: Path) -> None:
    """With the real catalogue, a mirror serving stand-in config files is refused even though
    its own listing is self-consistent (before: the listing's hashes were trusted)."""
    remote = _mirror(tmp_path / "mirror", FILES)
    dest = tmp_path / "model"
    with pytest.raises(ModelError, match=r"cosyvoice3\.yaml .* not the file VoiceLab pins"):
        dl.download_cosyvoice3(dest, fetcher=dl.LocalFetcher(remote, dest))
    assert not (dest / "cosyvoice3.yaml").exists()
