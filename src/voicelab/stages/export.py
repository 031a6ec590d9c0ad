"""``voicelab export``: a CosyVoice 3 model dir that speaks this voice, and its verification.

The voice dir (``pretrained_models/Fun-CosyVoice3-0.5B-<speaker>-sft`` by default) is the base model
dir with:

* every base file hard-linked (copied where links are impossible, e.g. across disks or on
  ``/mnt/c``), so a voice costs only its new weights on disk;
* a new ``llm.pt`` (the chosen checkpoints averaged, or one checkpoint stripped) and, when flow was
  trained, a new ``flow.pt`` (the base flow otherwise);
* no stale derived files: upstream reuses ``vllm/`` and TensorRT ``*.plan`` files when they exist,
  so they are left out after a new llm or flow, and ``flow.decoder.estimator.fp32.onnx`` (exported
  from the flow) after a new flow;
* ``spk2info.pt`` = ``{speaker: {'embedding': float32 (1, 192)}}`` from ``spk2embedding.pt``,
  merged with the speakers already there (base dir, previous voice dir), as ``inference_sft``
  reads it;
* ``voicelab.json``: where it came from (see :func:`base_identity` for how the base is identified).

It is assembled in a hidden staging dir beside the target, verified there, and only then swapped in
(two renames, undone on failure), so a failure at any point, a full disk included, leaves the
previous voice as it was and never leaves a half-written ``llm.pt``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicelab import __version__
from voicelab.contract import RunOptions, Stage, StageResult, resolve
from voicelab.errors import ConfigError, ModelError, VoiceLabError, WorkspaceError
from voicelab.fsutil import (
    atomic_write_json,
    free_bytes,
    hash_obj,
    link_or_copy,
    make_temp_dir,
    quick_fingerprint,
    read_json,
    sha256_file,
)
from voicelab.stages.checkpoints import (
    META_KEYS,
    Checkpoint,
    average,
    check_against,
    default_rule,
    evaluated,
    load_state_dict,
    parse_rule,
    run_checkpoints,
    save_state_dict,
    select,
)
from voicelab.upstream.artifacts import is_stale
from voicelab.upstream.model_files import BLANKEN, BLANKEN_FILES, INFERENCE_FILES, SPK2INFO
from voicelab.workspace import Workspace

log = logging.getLogger(__name__)

REQUIRED_FILES = INFERENCE_FILES
BLANKEN_REQUIRED = BLANKEN_FILES
STATE_FILES = ("llm.pt", "flow.pt", "hift.pt")

PROVENANCE = "voicelab.json"
DOWNLOAD_MANIFEST = ".voicelab-manifest.json"  # written by voicelab download
EMBED_DIM = 192
# Files up to this size are identified by sha256; larger ones (weights, ONNX) by size and mtime:
# hashing the 5 GB of a base model on every export would cost a minute on a Windows drive, and
# `voicelab download` already verifies the download itself.
HASH_LIMIT = 64 * 1024 * 1024


@dataclass
class ExportOptions:
    llm_select: str | None = None  # a rule of voicelab.stages.checkpoints.RULE_HELP; None: default
    flow_select: str | None = None
    no_flow: bool = False  # keep the base flow.pt even when flow was trained
    name: str | None = None  # voice dir name under pretrained_models/
    overwrite: bool = False


@dataclass
class VerifyReport:
    model_dir: Path
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    speakers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_failed(self) -> VerifyReport:
        if self.problems:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise ModelError(
                f"{self.model_dir} fails verification: {self.problems[0]}{more}",
                "export again (voicelab export --overwrite); for a base model: voicelab download",
            )
        return self


@dataclass
class ExportResult:
    voice_dir: Path
    speaker: str
    speakers: list[str]
    llm_rule: str
    llm: list[Checkpoint]
    flow_rule: str | None
    flow: list[Checkpoint]  # empty: the base flow was kept
    linked: int = 0
    copied: int = 0
    removed: list[str] = field(default_factory=list)
    verify: VerifyReport | None = None
    seconds: float = 0.0


# ---- helpers --------------------------------------------------------------------------------
def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def base_files(base_dir: Path) -> list[str]:
    """Relative paths of the base model's files (hidden files and dirs, e.g. download caches,
    skipped)."""
    out = []
    for root, dirs, files in os.walk(base_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            rel = Path(root, name).relative_to(base_dir)
            if not _hidden(rel):
                out.append(rel.as_posix())
    return out


def base_identity(base_dir: Path, files: list[str]) -> dict[str, Any]:
    """Sizes of every base file, sha256 of the small ones, size + mtime of the large ones, plus
    the digest ``voicelab download`` verified for a large file when this very file (same size,
    mtime and inode) was verified, and the repo/revision it was downloaded from."""
    manifest = read_json(base_dir / DOWNLOAD_MANIFEST, default={}) or {}
    verified = manifest.get("verified") if isinstance(manifest, dict) else None
    verified = verified if isinstance(verified, dict) else {}
    listing: dict[str, dict[str, Any]] = {}
    for rel in files:
        st = (base_dir / rel).stat()
        entry: dict[str, Any] = {"bytes": st.st_size}
        if st.st_size <= HASH_LIMIT:
            entry["sha256"] = sha256_file(base_dir / rel)
        else:
            entry["mtime_ns"] = st.st_mtime_ns
            digest = verified.get(quick_fingerprint(base_dir / rel))
            if digest:
                entry["verified"] = digest  # "sha256:..." or "git_sha1:..." (hub's own hashes)
        listing[rel] = entry
    out: dict[str, Any] = {"path": str(base_dir), "name": base_dir.name, "id": hash_obj(listing)}
    download = {k: manifest.get(k) for k in ("repo", "source", "revision", "llm")}
    if any(download.values()):
        out["download"] = download
    out["files"] = listing
    return out


def check_base_dir(base_dir: Path) -> None:
    if not base_dir.is_dir():
        raise ModelError(
            f"no base model at {base_dir}",
            "run: voicelab download (or set [model] base_dir in voicelab.toml)",
        )
    missing = [f for f in REQUIRED_FILES if not (base_dir / f).is_file()]
    if not (base_dir / BLANKEN).is_dir():
        missing.append(BLANKEN + "/")
    if missing:
        raise ModelError(
            f"base model at {base_dir} is incomplete: {', '.join(missing)} missing",
            "run: voicelab download (it resumes and verifies)",
        )


def _embedding(ws: Workspace, speaker: str) -> Any:
    import torch

    path = ws.split_dir("train") / "spk2embedding.pt"
    if not path.is_file():
        raise WorkspaceError(
            f"no speaker embedding at {path}", "run: voicelab features (it writes spk2embedding.pt)"
        )
    data = load_state_dict(path)
    if speaker not in data:
        have = ", ".join(sorted(map(str, data))[:5]) or "none"
        raise WorkspaceError(
            f"{path} has no embedding for speaker {speaker!r} (speakers there: {have})",
            "run voicelab features again for this workspace",
        )
    emb = torch.as_tensor(data[speaker], dtype=torch.float32).detach().reshape(-1)
    if emb.numel() != EMBED_DIM or not bool(torch.isfinite(emb).all()):
        raise WorkspaceError(
            f"speaker embedding of {speaker!r} in {path} is not {EMBED_DIM} finite numbers",
            "run voicelab features again",
        )
    return emb.reshape(1, EMBED_DIM).clone()


def _load_spk2info(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = load_state_dict(path)
    except ModelError as e:
        raise ModelError(
            f"cannot merge speakers: {e.message}",
            f"move {path} away (it holds the other speakers), then export again",
        ) from e
    return dict(data)


def _training_info(ckpts: list[Checkpoint]) -> dict[str, Any]:
    """Training settings from the last chosen checkpoint's yaml (train_conf + CLI args)."""
    if not ckpts:
        return {}
    per_step = {"loss_dict", "grad_norm", "lr", "batch_idx", "save_time", "tag", *META_KEYS}
    return {k: v for k, v in ckpts[-1].info.items() if k not in per_step}


def _data_fingerprint(ws: Workspace) -> dict[str, Any]:
    from voicelab.state import load_record

    out: dict[str, Any] = {}
    emb = ws.split_dir("train") / "spk2embedding.pt"
    if emb.is_file():
        out["spk2embedding_sha256"] = sha256_file(emb)
    for split in ("train", "dev"):
        lst = ws.data_list(split)
        if lst.is_file():
            out[f"{split}_data_list_sha256"] = sha256_file(lst)
    stages = {}
    if ws.state_dir.is_dir():
        for rec_file in sorted(ws.state_dir.glob("*.json")):
            rec = load_record(ws, rec_file.stem)
            if rec and rec.stage != "export" and rec.status == "done":
                stages[rec.stage] = {"inputs": rec.inputs, "params": rec.params}
    out["stages"] = stages
    out["fingerprint"] = hash_obj(out)
    return out


def _vendor_info() -> dict[str, Any]:
    try:
        from voicelab.vendor import cosyvoice_runtime

        rt = cosyvoice_runtime()
        return {"commit": getattr(rt, "commit", None)}
    except (ImportError, VoiceLabError) as e:
        return {"commit": None, "note": str(e)[:200]}


def _restore_interrupted(pretrained: Path, name: str, target: Path) -> None:
    """Undo what a killed export left: a previous voice moved aside, staging dirs."""
    olds = sorted(pretrained.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not target.exists():
        log.warning("restoring %s, moved aside by an interrupted export", target.name)
        os.rename(olds.pop(), target)
    for leftover in [*olds, *pretrained.glob(f".{name}.staging-*")]:
        log.info("removing leftover %s", leftover.name)
        _remove(leftover)


def _swap_in(staging: Path, target: Path) -> None:
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{int(time.time())}")
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_symlink():  # a voice dir linked from elsewhere: drop the link, not its target
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


_AGAIN = "export again; the previous voice is kept"


def _write_fail(e: OSError, what: Path) -> ModelError:
    from voicelab.stages.checkpoints import _enospc

    if _enospc(e):
        return ModelError(
            f"disk full while writing {what} ({free_bytes(what.parent) / 1e6:.1f} MB free)",
            f"free space on the disk of {what.parent} and {_AGAIN}",
        )
    return ModelError(f"could not write {what}: {e}", "check the disk and permissions")


def _prov(c: Checkpoint) -> dict[str, Any]:
    return {k: v for k, v in c.summary().items() if k not in ("chosen", "exported")}


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(
            f"bad voice dir name {name!r}", "use a plain folder name, e.g. --name myvoice"
        )
    return name


def _state_shapes(path: Path) -> dict[str, Any]:
    return load_state_dict(path)  # memory-mapped: keys and shapes cost nothing


# ---- export ---------------------------------------------------------------------------------
def run_export(ws: Workspace, opts: ExportOptions | None = None) -> ExportResult:
    """Assemble, verify and swap in the voice dir. See the module docstring."""
    opts = opts or ExportOptions()
    t0 = time.time()
    speaker = ws.speaker
    name = _check_name(opts.name or ws.voice_name)
    base_dir = ws.base_model_dir
    pretrained = ws.pretrained_dir
    target = pretrained / name
    for given in (opts.llm_select, opts.flow_select):
        if given:
            parse_rule(given)  # a typo is reported as such before anything else
    check_base_dir(base_dir)
    if target.exists() and target.resolve() == base_dir.resolve():
        raise ConfigError(
            f"the voice dir {target} is the base model dir", "choose another --name for the voice"
        )
    pretrained.mkdir(parents=True, exist_ok=True)
    _restore_interrupted(pretrained, name, target)
    if target.exists() and not opts.overwrite:
        raise ModelError(
            f"{target} already exists",
            "pass --overwrite to replace it, keeping its other speakers, or --name NEW",
        )

    # Choose checkpoints (fails before anything is written).
    locked = ws.config.locked_epoch
    llm_rule = opts.llm_select or default_rule("llm", locked)
    if opts.llm_select and locked is not None:
        log.info(
            "epoch %d is locked; --llm-select %s overrides it for this export", locked, llm_rule
        )
    llm_all = run_checkpoints(ws, "llm")
    for model in ("llm", "flow"):
        ds = ws.exp_dir(model, "deepspeed")
        ddp_has = any(c.kind != "init" for c in (llm_all if model == "llm" else []))
        if ds.is_dir() and any(ds.glob("epoch_*")) and (model == "flow" or not ddp_has):
            log.warning(
                "%s has deepspeed checkpoint folders: export reads torch_ddp checkpoints only"
                " (train with --engine torch_ddp)",
                ds,
            )
    if not opts.llm_select and locked is not None and not any(c.locked for c in llm_all):
        raise ModelError(
            f"epoch {locked} is locked but {ws.exp_dir('llm')} has no epoch_{locked}_whole.pt",
            "lock another epoch (voicelab checkpoints --lock N), --unlock, or --llm-select",
        )
    if not opts.llm_select and locked is None:
        llm_rule = default_rule("llm", None, evaluated(llm_all))  # best-eval once evaluated
    llm_ckpts = select(llm_all, llm_rule, str(ws.exp_dir("llm")))
    flow_all = run_checkpoints(ws, "flow")
    flow_rule: str | None = None
    flow_ckpts: list[Checkpoint] = []
    if opts.no_flow:
        if opts.flow_select:
            raise ConfigError(
                "--flow-select and --no-flow contradict each other", "pass one of them"
            )
    elif opts.flow_select or any(c.kind in ("epoch", "step") for c in flow_all):
        flow_rule = opts.flow_select or default_rule("flow", None)
        if not opts.flow_select and not any(c.kind == "epoch" for c in flow_all):
            raise ModelError(
                f"flow training in {ws.exp_dir('flow')} left only step checkpoints",
                "pass --flow-select step:last:N, or --no-flow to keep the base flow",
            )
        flow_ckpts = select(flow_all, flow_rule, str(ws.exp_dir("flow")))
    new_flow = bool(flow_ckpts)
    embedding = _embedding(ws, speaker)

    # Cheap early check (memory-mapped): the checkpoints belong to this base model.
    for model, ckpts in (("llm", llm_ckpts), ("flow", flow_ckpts)):
        if ckpts:
            first = {k: v for k, v in load_state_dict(ckpts[0].path).items() if k not in META_KEYS}
            check_against(
                first,
                _state_shapes(base_dir / f"{model}.pt"),
                ckpts[0].path.name,
                f"the base {model}.pt",
            )
            del first

    files = base_files(base_dir)
    replaced = {"llm.pt", SPK2INFO, PROVENANCE} | ({"flow.pt"} if new_flow else set())
    stale = [f for f in files if is_stale(f, new_flow)]
    carry = [f for f in files if f not in replaced and f not in stale]
    need = sum(
        (base_dir / f"{m}.pt").stat().st_size for m in ("llm", "flow") if m != "flow" or new_flow
    )
    if free_bytes(pretrained) < need:
        log.warning(
            "only %.1f GB free for about %.1f GB of new weights in %s",
            free_bytes(pretrained) / 1e9,
            need / 1e9,
            pretrained,
        )

    inputs = {
        "llm": [c.path.name for c in llm_ckpts],
        "flow": [c.path.name for c in flow_ckpts],
        "ckpt_sizes": [c.size for c in (*llm_ckpts, *flow_ckpts)],
        "base": str(base_dir),
    }
    params = {"llm_rule": llm_rule, "flow_rule": flow_rule, "name": name}
    from voicelab.state import stage_run

    try:
        with stage_run(ws, "export", inputs, params) as rec:
            staging = make_temp_dir(pretrained, prefix=f".{name}.staging-")
            swapped = False
            try:
                res = ExportResult(
                    voice_dir=target,
                    speaker=speaker,
                    speakers=[],
                    llm_rule=llm_rule,
                    llm=llm_ckpts,
                    flow_rule=flow_rule,
                    flow=flow_ckpts,
                )
                # New weights first: they are what can fill a disk.
                for model, ckpts in (("llm", llm_ckpts), ("flow", flow_ckpts)):
                    if not ckpts:
                        continue
                    log.info(
                        "%s.pt: %s",
                        model,
                        ckpts[0].label
                        if len(ckpts) == 1
                        else f"average of {', '.join(c.label for c in ckpts)}",
                    )
                    state = average([c.path for c in ckpts])
                    save_state_dict(state, staging / f"{model}.pt", target / f"{model}.pt", _AGAIN)
                    del state
                for rel in carry:
                    try:
                        how = link_or_copy(base_dir / rel, staging / rel)
                    except OSError as e:
                        raise _write_fail(e, target / rel) from e
                    if how == "link":
                        res.linked += 1
                    else:
                        res.copied += 1
                if res.copied:
                    log.info("%d base files copied (hard links impossible here)", res.copied)

                spk2info = _load_spk2info(base_dir / SPK2INFO)
                spk2info.update(_load_spk2info(target / SPK2INFO))
                spk2info[speaker] = {"embedding": embedding}
                save_state_dict(spk2info, staging / SPK2INFO, target / SPK2INFO, _AGAIN)
                res.speakers = sorted(map(str, spk2info))

                res.removed = list(stale)
                if target.is_dir():
                    res.removed += [
                        f
                        for f in base_files(target)
                        if is_stale(f, new_flow) and f not in res.removed
                    ]
                provenance = {
                    "format": 1,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "voicelab_version": __version__,
                    "speaker": speaker,
                    "speakers": res.speakers,
                    "base_model": base_identity(base_dir, files),
                    "vendor": _vendor_info(),
                    "data": _data_fingerprint(ws),
                    "llm": {
                        "rule": llm_rule,
                        "locked_epoch": locked,
                        "checkpoints": [_prov(c) for c in llm_ckpts],
                        "training": _training_info(llm_ckpts),
                    },
                    "flow": (
                        {
                            "rule": flow_rule,
                            "checkpoints": [_prov(c) for c in flow_ckpts],
                            "training": _training_info(flow_ckpts),
                        }
                        if new_flow
                        else {"base": True}
                    ),
                    "removed_stale": res.removed,
                }
                try:
                    atomic_write_json(staging / PROVENANCE, provenance)
                except OSError as e:
                    raise _write_fail(e, target / PROVENANCE) from e

                if target.is_dir():
                    now = set(base_files(staging))
                    dropped = [f for f in base_files(target) if f not in now | set(res.removed)]
                    if dropped:
                        log.warning(
                            "not carried over from the previous %s: %s",
                            target.name,
                            ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""),
                        )
                res.verify = verify_voice_dir(staging, base_dir, speaker).raise_if_failed()
                _swap_in(staging, target)
                swapped = True
            finally:
                if not swapped:
                    shutil.rmtree(staging, ignore_errors=True)
            res.verify.model_dir = target
            res.seconds = time.time() - t0
            rec.outputs = [str(target)]
            rec.figures.update(
                voice_dir=str(target),
                llm=[c.label for c in llm_ckpts],
                llm_cv_loss=[c.cv_loss for c in llm_ckpts],
                flow=[c.label for c in flow_ckpts] or "base",
                speakers=res.speakers,
                linked=res.linked,
                copied=res.copied,
            )
    except OSError as e:  # a full disk met outside the guarded writes (temp dir, record)
        raise _write_fail(e, target) from e
    return res


# ---- verification ---------------------------------------------------------------------------
def verify_voice_dir(
    model_dir: Path, base_dir: Path | None = None, speaker: str | None = None
) -> VerifyReport:
    """Check ``model_dir`` as upstream's ``CosyVoice3(model_dir)`` will use it, without importing
    upstream: the files it opens exist; the weights load (``weights_only``) as plain state dicts,
    and those that differ from the base have exactly its keys and shapes; every other base file
    is there with its size; ``spk2info.pt`` loads and holds (1, 192) float embeddings.

    ``base_dir`` defaults to the one recorded in ``voicelab.json``; without a base, files are
    compared with the sizes recorded there.
    """
    import torch

    model_dir = Path(model_dir)
    rep = VerifyReport(model_dir)
    if not model_dir.is_dir():
        rep.problems.append(f"{model_dir} is not a folder")
        return rep
    prov = read_json(model_dir / PROVENANCE, default={}) or {}
    recorded: dict[str, Any] = (prov.get("base_model") or {}).get("files") or {}
    if base_dir is None and (prov.get("base_model") or {}).get("path"):
        candidate = Path(prov["base_model"]["path"])
        base_dir = candidate if candidate.is_dir() else None
    speaker = speaker or prov.get("speaker")

    for f in REQUIRED_FILES:
        p = model_dir / f
        if not p.is_file():
            rep.problems.append(f"{f} missing")
        elif p.stat().st_size == 0:
            rep.problems.append(f"{f} is empty")
    blank = model_dir / BLANKEN
    if not blank.is_dir():
        rep.problems.append(f"{BLANKEN}/ missing")
    else:
        rep.problems += [
            f"{BLANKEN}/{f} missing" for f in BLANKEN_REQUIRED if not (blank / f).is_file()
        ]
    rep.checked.append("required files")

    # Every other base file, with its size (a truncated copy has another size).
    if base_dir is not None:
        expected = {rel: (base_dir / rel).stat().st_size for rel in base_files(base_dir)}
    else:
        expected = {rel: int(e["bytes"]) for rel, e in recorded.items()}
    for rel, size in expected.items():
        if rel in STATE_FILES or rel in (SPK2INFO, PROVENANCE) or is_stale(rel, True):
            continue
        p = model_dir / rel
        if not p.is_file():
            if f"{rel} missing" not in rep.problems:
                rep.problems.append(f"{rel} missing")
        elif p.stat().st_size != size:
            rep.problems.append(f"{rel} has {p.stat().st_size} bytes, the base has {size}")
    if expected:
        rep.checked.append("base files")

    yaml_ref: dict[str, dict[str, Any]] | str | None = None
    for f in STATE_FILES:
        p = model_dir / f
        if not p.is_file() or p.stat().st_size == 0:
            continue
        try:
            state = load_state_dict(p)
        except ModelError as e:
            rep.problems.append(f"{f} does not load ({e.message.split(': ', 1)[-1]})")
            continue
        meta = [k for k in META_KEYS if k in state]
        odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if meta or odd:
            rep.problems.append(f"{f} is not a plain state dict (has {(meta or odd)[0]!r})")
            continue
        base_file = base_dir / f if base_dir is not None else None
        if base_file is not None and base_file.is_file():
            if not os.path.samefile(p, base_file):
                try:
                    check_against(state, load_state_dict(base_file), f, f"the base {f}")
                except ModelError as e:
                    rep.problems.append(e.message)
        else:
            # No base to compare with: the dir's own cosyvoice3.yaml says what fits.
            if (
                base_file is None
                and f in recorded
                and f not in ("llm.pt", "flow.pt")
                and p.stat().st_size != int(recorded[f]["bytes"])
            ):
                rep.problems.append(f"{f} differs in size from the base")
            if yaml_ref is None:
                yaml_ref = _yaml_reference(model_dir)
            if isinstance(yaml_ref, str):
                if yaml_ref not in rep.problems:
                    rep.problems.append(yaml_ref)
            else:
                try:
                    check_against(state, yaml_ref[f.removesuffix(".pt")], f, "cosyvoice3.yaml")
                except ModelError as e:
                    rep.problems.append(e.message)
        del state
    rep.checked.append("state dicts")

    p = model_dir / SPK2INFO
    if not p.is_file():
        rep.problems.append(f"{SPK2INFO} missing (inference_sft would know no speaker)")
    else:
        try:
            info = load_state_dict(p)
        except ModelError as e:
            rep.problems.append(f"{SPK2INFO} does not load ({e.message.split(': ', 1)[-1]})")
            info = {}
        for spk, entry in info.items():
            if not isinstance(entry, dict):
                rep.problems.append(f"{SPK2INFO}: entry {spk!r} is not a dict")
                continue
            emb = entry.get("embedding")
            if emb is None:
                continue  # a zero-shot entry (add_zero_shot_spk): not for inference_sft
            if (
                not isinstance(emb, torch.Tensor)
                or tuple(emb.shape) != (1, EMBED_DIM)
                or not (emb.is_floating_point())
            ):
                shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
                rep.problems.append(
                    f"{SPK2INFO}: embedding of {spk!r} is {shape}, not a float (1, {EMBED_DIM})"
                )
        rep.speakers = sorted(map(str, info))
        if speaker and info and speaker not in info:
            rep.problems.append(f"{SPK2INFO} has no speaker {speaker!r}")
        rep.checked.append(SPK2INFO)
    return rep


def _yaml_reference(model_dir: Path) -> dict[str, dict[str, Any]] | str:
    """Meta tensors of the keys and shapes ``model_dir/cosyvoice3.yaml`` builds, or the problem
    that keeps them from being checked."""
    import torch

    from voicelab.errors import VendorError
    from voicelab.upstream.model_shapes import yaml_shapes
    from voicelab.vendor import cosyvoice_runtime

    try:
        shapes = yaml_shapes(model_dir, cosyvoice_runtime())
    except VendorError:
        return (
            "keys and shapes of the state dicts not checked: no base model dir and no upstream "
            "checkout to build cosyvoice3.yaml's modules (voicelab vendor sync cosyvoice, or put "
            "the base model back where voicelab.json says)"
        )
    except ModelError as e:
        return e.message
    return {
        m: {k: torch.empty(s, device="meta") for k, s in keys.items()} for m, keys in shapes.items()
    }


def check_dir(path: Path, base_dir: Path | None = None) -> VerifyReport:
    """``voicelab export --check DIR``: verification alone; raises on the first problem."""
    return verify_voice_dir(Path(path), base_dir).raise_if_failed()


def set_lock(ws: Workspace, epoch: int | None) -> int | None:
    """Lock (or with None unlock) an llm epoch in voicelab.toml; selection and say honour it."""
    if epoch is not None:
        ckpts = run_checkpoints(ws, "llm")
        epochs = [c.epoch for c in ckpts if c.kind == "epoch"]
        if epoch not in epochs:
            have = ",".join(map(str, epochs)) or "none"
            raise ModelError(
                f"no epoch_{epoch}_whole.pt in {ws.exp_dir('llm')} (epochs there: {have})",
                "lock an epoch that exists",
            )
    ws.config.locked_epoch = epoch
    ws.save()
    return epoch


__all__ = [
    "ExportOptions",
    "ExportResult",
    "VerifyReport",
    "check_dir",
    "run_export",
    "set_lock",
    "verify_voice_dir",
]


# ---- the stage contract (voicelab.contract) --------------------------------------------------

Options = ExportOptions


def stage_options(ws: Workspace, run_opts: RunOptions) -> ExportOptions:
    """The runner exports over the last voice dir, with the flow only when it was trained."""
    return resolve(ws, ExportOptions, "export", run_opts, no_flow=not run_opts.train_flow,
                   overwrite=True)  # fmt: skip


def stage_params(ws: Workspace, opts: ExportOptions) -> dict[str, Any]:
    return {
        "llm_select": opts.llm_select,
        "flow_select": opts.flow_select,
        "flow": not opts.no_flow,
        "name": ws.voice_name,
        "locked_epoch": ws.config.locked_epoch,
    }


def stage_outputs(ws: Workspace, opts: ExportOptions) -> list[Path]:
    return [ws.voice_dir / "llm.pt", ws.voice_dir / SPK2INFO]


def run(ws: Workspace, opts: ExportOptions) -> StageResult:
    res = run_export(ws, opts)
    figures = {"voice_dir": str(res.voice_dir), "llm": [c.label for c in res.llm]}
    line = f"voice {res.speaker} exported to {res.voice_dir}"
    return StageResult([res.voice_dir], figures, line, res)


STAGE = Stage(
    "export",
    ("train_llm", "train_flow"),
    stage_params,
    run,
    stage_outputs,
    summary="voice model dir",
    records_itself=True,
    options=stage_options,
)
