"""The default stage graph of ``voicelab run``: each stage calls one library function.

Order (``--from``/``--until`` take these names): vendor, download, prepare, features, pack,
train_llm, train_flow (with ``--train-flow``), export, audition. ``params`` lists the options
that shape a stage's outputs, so changing one makes that stage and everything after it stale.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from voicelab import pipeline
from voicelab.errors import ConfigError, ModelError
from voicelab.pipeline import Outcome, RunOptions, Stage, StageRun, StageState, plain
from voicelab.state import load_record
from voicelab.workspace import BASE_MODEL_NAME, Workspace

log = logging.getLogger(__name__)

TINY_MODEL_NAME = "CosyVoice3-tiny-random"


# ---- vendor --------------------------------------------------------------------------------
def _vendor_params(ws: Workspace, o: RunOptions) -> dict[str, Any]:
    from voicelab.vendor import load_manifest

    spec = load_manifest().get("cosyvoice")
    return {"commit": spec.commit}


def _vendor_run(ws: Workspace, o: RunOptions) -> dict[str, Any]:
    from voicelab.vendor import cosyvoice_runtime, sync

    (res,) = sync(["cosyvoice"])
    if res.error is not None:
        raise res.error
    log.info("vendor cosyvoice: %s %s", res.action, res.detail)
    return {"commit": cosyvoice_runtime().commit, "action": res.action}


def _vendor_outputs(ws: Workspace, o: RunOptions) -> list[Path]:
    from voicelab.vendor import cosyvoice_runtime

    try:
        return [cosyvoice_runtime().root / "cosyvoice" / "bin" / "train.py"]
    except Exception:  # a broken vendor: make the stage stale rather than fail the status
        return [Path("/nonexistent/vendor/CosyVoice")]


# ---- download ------------------------------------------------------------------------------
def _download_params(ws: Workspace, o: RunOptions) -> dict[str, Any]:
    if o.tiny:
        return {"model": "tiny", "dir": str(ws.base_model_dir)}
    return {
        "model": BASE_MODEL_NAME,
        "dir": str(ws.base_model_dir),
        "source": o.get(ws, "download", "source"),
        "rl": o.get(ws, "download", "rl"),
    }


def _download_run(ws: Workspace, o: RunOptions) -> dict[str, Any]:
    if o.tiny:
        from voicelab.upstream.tinymodel import build_tiny_model

        path = build_tiny_model(ws.base_model_dir)
        return {"model_dir": str(path), "tiny": True}
    from voicelab.download import download_cosyvoice3

    res = download_cosyvoice3(
        ws.base_model_dir,
        source=o.get(ws, "download", "source"),
        endpoint=o.get(ws, "download", "endpoint"),
        rl=o.get(ws, "download", "rl"),  # None keeps the dir's current choice
    )
    return {
        "model_dir": str(res.model_dir) if hasattr(res, "model_dir") else str(ws.base_model_dir)
    }


def _download_outputs(ws: Workspace, o: RunOptions) -> list[Path]:
    return [ws.base_model_dir / "llm.pt", ws.base_model_dir / "campplus.onnx"]


# ---- prepare / features / pack -------------------------------------------------------------
def _prepare_opts(ws: Workspace, o: RunOptions) -> Any:
    from voicelab.prepare import options_from_workspace

    return options_from_workspace(ws, **o.overrides.get("prepare", {}))


def _prepare_params(ws: Workspace, o: RunOptions) -> dict[str, Any]:
    p = plain(_prepare_opts(ws, o))
    for volatile in ("review", "apply_review", "device", "vad_filter"):
        p.pop(volatile, None)
    p["wav_dir"] = p.get("wav_dir") or ws.config.wav_dir
    return p


def _prepare_run(ws: Workspace, o: RunOptions) -> dict[str, Any]:
    from voicelab.prepare import run_prepare

    res = run_prepare(ws, _prepare_opts(ws, o))
    return Outcome(res.figures(), res)


def _split_outputs(ws: Workspace, o: RunOptions) -> list[Path]:
    return [ws.split_dir(s) / f for s in ("train", "dev") for f in ("wav.scp", "text")]


def _features_params(ws: Workspace, o: RunOptions) -> dict[str, Any]:
    return {"onnx_dir": str(o.get(ws, "features", "onnx_dir") or ws.base_model_dir)}


def _features_run(ws: Workspace, o: RunOptions) -> Outcome:
    from voicelab.features import FeaturesOptions, run_features

    device = o.get(ws, "features", "device", o.device)
    opts = FeaturesOptions(
        device=device or "auto",
        onnx_dir=o.get(ws, "features", "onnx_dir"),
        threads=o.get(ws, "features", "threads"),
        token_batch=o.get(ws, "features", "token_batch"),
        force=bool(o.overrides.get("features", {}).get("force") or o.force),
    )
    res = run_features(ws, opts)
    return Outcome({"provider": res.provider, "excluded": len(res.excluded)}, res)


def _features_outputs(ws: Workspace, o: RunOptions) -> list[Path]:
    names = ("utt2embedding.pt", "spk2embedding.pt", "utt2speech_token.pt")
    return [ws.split_dir(s) / n for s in ("train", "dev") for n in names]


def _pack_params(ws: Workspace, o: RunOptions) -> dict[str, Any]:
    return {
        "utts_per_shard": o.get(ws, "pack", "utts_per_shard"),
        "num_workers": o.get(ws, "pack", "num_workers", o.get(ws, "train", "num_workers")),
        "gpus": o.get(ws, "pack", "gpus", o.get(ws, "train", "gpus")),
    }


def _pack_run(ws: Workspace, o: RunOptions) -> Outcome:
    from voicelab.pack import PackOptions, run_pack

    p = _pack_params(ws, o)
    given = o.overrides.get("pack", {})
    res = run_pack(
        ws,
        PackOptions(
            utts_per_shard=p["utts_per_shard"],
            num_workers=p["num_workers"],
            num_gpus=p["gpus"],
            jobs=given.get("jobs"),
            force=bool(given.get("force") or o.force),
        ),
    )
    return Outcome({f"{s}_shards": len(sp.shards) for s, sp in res.splits.items()}, res)


def _pack_outputs(ws: Workspace, o: RunOptions) -> list[Path]:
    return [ws.data_list("train"), ws.data_list("dev")]


# ---- train ---------------------------------------------------------------------------------
TRAIN_KEYS = (
    "epochs",
    "batch_frames",
    "accum_grad",
    "lr",
    "save_per_step",
    "engine",
    "amp",
    "gpus",
    "num_workers",
    "prefetch",
    "trainer",
)


def _train_params(model: str):
    def params(ws: Workspace, o: RunOptions) -> dict[str, Any]:
        section = f"train_{model}" if model == "flow" else "train"
        values = {k: o.get(ws, section, k, o.get(ws, "train", k)) for k in TRAIN_KEYS}
        values["device"] = o.get(ws, "train", "device", o.device)
        return values

    return params


def _train_run(model: str):
    def run(ws: Workspace, o: RunOptions) -> dict[str, Any]:
        from voicelab.train import TrainOptions, run_has_content, run_name, run_train
        from voicelab.workspace import DEFAULT_TRAINER

        values = _train_params(model)(ws, o)
        rec = load_record(ws, f"train_{model}")
        trainer = values.get("trainer") or ws.option("train", "trainer") or DEFAULT_TRAINER
        has_run = run_has_content(
            ws.exp_dir(model, run_name(trainer, values.get("engine") or "torch_ddp"))
        )
        # Interrupted (the record was running/pending/stopped): continue it. Otherwise the data
        # or the options changed: start a fresh run, keeping the old one under a numbered name.
        interrupted = rec is not None and rec.previous in ("running", "pending", "stopped")
        opts = TrainOptions(
            **{
                k: v
                for k, v in values.items()
                if v is not None and k in TrainOptions.__annotations__
            },
            resume=has_run and interrupted,
            new=has_run and not interrupted,
        )
        res = run_train(ws, model, opts)
        return {
            "epochs": res.epochs_done,
            "best_cv_loss": res.best_cv_loss,
            "run_dir": str(res.run_dir),
        }

    return run


def _train_outputs(model: str):
    def outputs(ws: Workspace, o: RunOptions) -> list[Path]:
        rec = load_record(ws, f"train_{model}")
        last = rec.figures.get("last_checkpoint") if rec else None
        return [Path(last)] if last else [ws.exp_dir(model) / "train_log.jsonl"]

    return outputs


# ---- export / audition ---------------------------------------------------------------------
def _export_params(ws: Workspace, o: RunOptions) -> dict[str, Any]:
    return {
        "llm_select": o.get(ws, "export", "llm_select"),
        "flow_select": o.get(ws, "export", "flow_select"),
        "flow": o.train_flow,
        "name": ws.voice_name,
        "locked_epoch": ws.config.locked_epoch,
    }


def _export_run(ws: Workspace, o: RunOptions) -> dict[str, Any]:
    from voicelab.export import ExportOptions, run_export

    p = _export_params(ws, o)
    res = run_export(
        ws,
        ExportOptions(
            llm_select=p["llm_select"],
            flow_select=p["flow_select"],
            no_flow=not o.train_flow,
            overwrite=True,
        ),
    )
    return {"voice_dir": str(res.voice_dir), "llm": [c.label for c in res.llm]}


def _audition_params(ws: Workspace, o: RunOptions) -> dict[str, Any]:
    return {
        "sentences": o.get(ws, "audition", "sentences"),
        "compare": bool(o.get(ws, "audition", "compare", False)),
    }


def _audition_run(ws: Workspace, o: RunOptions) -> dict[str, Any]:
    from voicelab.audition import AuditionOptions, run_audition

    p = _audition_params(ws, o)
    res = run_audition(
        ws, AuditionOptions(sentences=p["sentences"], compare=p["compare"], model_dir=ws.voice_dir)
    )
    return {"index": str(res.index), "takes": res.takes, "rtf": round(res.rtf, 3)}


def _audition_outputs(ws: Workspace, o: RunOptions) -> list[Path]:
    rec = load_record(ws, "audition")
    index = rec.figures.get("index") if rec else None
    return [Path(index)] if index else []


def run_options(ws: Workspace, **given: Any) -> RunOptions:
    """RunOptions for this workspace: ``given`` flags (None = not given), else what the last
    ``voicelab run``/``demo`` saved under ``[run]`` (so ``status`` judges with the same)."""
    saved = ws.config.section("run")
    flags = {}
    for key in ("train_flow", "tiny", "device"):
        value = given.pop(key, None)
        flags[key] = value if value is not None else saved.get(key)
    opts = RunOptions(
        train_flow=bool(flags["train_flow"]),
        tiny=bool(flags["tiny"]),
        device=flags["device"] or "auto",
        **{k: v for k, v in given.items() if v is not None},
    )
    return opts


def save_run_options(ws: Workspace, opts: RunOptions) -> None:
    ws.config.sections["run"] = {
        "train_flow": opts.train_flow,
        "tiny": opts.tiny,
        "device": opts.device,
    }
    ws.save()


def next_step(ws: Workspace) -> str:
    """The command that moves this workspace on, from its stage states (for hints such as
    ``say`` with nothing exported yet)."""
    for s in pipeline.stage_states(ws, default_stages(), run_options(ws)):
        if s.state in ("done", "disabled"):
            continue
        if s.name == "export":
            return "run: voicelab export (training is done)"
        return f"{s.name} is {s.state} ({s.reason}): run: voicelab run"
    return "run: voicelab run"


@contextlib.contextmanager
def voice_hint(ws: Workspace | None, model_dir: object = None) -> Iterator[None]:
    """Front ends around ``say``/``audition``: with no exported voice in the workspace, the
    error says what comes next from the stage states (one line, the same on the CLI and the
    web page) instead of a missing model dir."""
    try:
        yield
    except ModelError as e:
        if ws is None or model_dir is not None or ws.voice_dir.is_dir():
            raise
        raise ModelError(f"no exported voice yet at {ws.voice_dir}", next_step(ws)) from e


def run_stage(ws: Workspace, name: str, opts: RunOptions) -> StageRun:
    """Run the stage ``name`` alone through the runner (``voicelab prepare``, ``features``,
    ``pack``): recorded exactly as ``voicelab run`` records it."""
    by_name = {s.name: s for s in default_stages()}
    if name not in by_name:
        raise ConfigError(f"unknown stage {name!r}", "choose one of: " + ", ".join(by_name))
    return pipeline.run_stage(ws, by_name[name], opts)


def default_stages() -> list[Stage]:
    return [
        Stage(
            "vendor",
            (),
            _vendor_params,
            _vendor_run,
            _vendor_outputs,
            summary="upstream CosyVoice checkout at its pin",
        ),
        Stage(
            "download",
            (),
            _download_params,
            _download_run,
            _download_outputs,
            summary="base model",
            found_by_outputs=True,
        ),
        Stage(
            "prepare",
            (),
            _prepare_params,
            _prepare_run,
            _split_outputs,
            summary="intake, segmentation, ASR, QC, split",
            records_itself=True,
        ),
        Stage(
            "features",
            ("prepare", "download"),
            _features_params,
            _features_run,
            _features_outputs,
            summary="speaker embeddings and speech tokens",
            records_itself=True,
        ),
        Stage(
            "pack",
            ("features",),
            _pack_params,
            _pack_run,
            _pack_outputs,
            summary="parquet shards",
            records_itself=True,
        ),
        Stage(
            "train_llm",
            ("pack", "vendor", "download"),
            _train_params("llm"),
            _train_run("llm"),
            _train_outputs("llm"),
            summary="LLM fine-tune",
            records_itself=True,
        ),
        Stage(
            "train_flow",
            ("pack", "vendor", "download"),
            _train_params("flow"),
            _train_run("flow"),
            _train_outputs("flow"),
            enabled=lambda o: o.train_flow,
            summary="flow fine-tune",
            records_itself=True,
        ),
        Stage(
            "export",
            ("train_llm", "train_flow"),
            _export_params,
            _export_run,
            lambda ws, o: [ws.voice_dir / "llm.pt", ws.voice_dir / "spk2info.pt"],
            summary="voice model dir",
            records_itself=True,
        ),
        Stage(
            "audition",
            ("export",),
            _audition_params,
            _audition_run,
            _audition_outputs,
            summary="test sentences",
        ),
    ]


STAGE_NAMES = [s.name for s in default_stages()]


def figure_line(s: StageState) -> str:
    """Key figures of a stage for ``voicelab status``."""
    f = s.figures
    name = s.name
    if name == "prepare" and "kept" in f:
        return (
            f"{f.get('kept_minutes', 0)} min kept, {f.get('kept')} utts "
            f"(train {f.get('train')}, dev {f.get('dev')}), {f.get('excluded')} excluded"
        )
    if name == "features" and "kept" in f:
        return f"{f.get('kept')} utts, {f.get('excluded', 0)} excluded, {f.get('provider', '')}"
    if name == "pack" and "train_shards" in f:
        return f"{f.get('train_shards')} train / {f.get('dev_shards')} dev shards"
    if name.startswith("train_") and "epochs" in f:
        best = f.get("best_cv_loss")
        best_s = f", best CV loss {best:.4f}" if isinstance(best, (int, float)) else ""
        return f"{f.get('epochs')} epoch(s){best_s}"
    if name == "export" and "voice_dir" in f:
        return str(f["voice_dir"])
    if name == "audition" and "index" in f:
        return str(f["index"])
    if name == "vendor" and "commit" in f:
        return str(f["commit"])[:12]
    return ""
