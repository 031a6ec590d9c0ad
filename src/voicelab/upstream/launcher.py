"""The process torchrun starts: runtime fixes first, then upstream's ``cosyvoice/bin/train.py``.

Usage (``voicelab train`` builds this; ``launch.sh`` in each run dir records it)::

    python -m torch.distributed.run --standalone --nproc_per_node N \\
        -m voicelab.upstream.launcher --vendor-root VENDOR [--device cpu] -- <train.py arguments>

Upstream's train.py and model classes run unmodified from the vendor checkout. What makes them
work with the torch/torchaudio pair of our ``train`` extra, with offline features, and on a CPU
for tiny models, is applied here, in this process, before any upstream module is imported by
train.py. Every fix is contained (it only changes what it names) and says why below:

1. offline features: ``online_feature`` stays False (no speech tokenizer ONNX per step), and
   ONNX sessions upstream still creates honour ``COSYVOICE_ORT_FORCE_CPU``;
2. ``--num_workers 0`` works (no ``prefetch_factor`` then); workers re-apply the fixes;
3. ``torchaudio.load`` reads through soundfile (torchaudio >= 2.9 needs torchcodec + FFmpeg);
4. ``ProcessGroup.options`` is restored for ``cosyvoice_join`` (removed in torch >= 2.9);
5. ``--device cpu``: gloo, no ``torch.cuda`` calls, forward on the CPU; small models only;
6. TensorBoard events never land in the current folder (the vendor checkout, in the notes);
7. a resumed run keeps its first ``init.pt`` (train.py rewrites it at every start);
8. with ``VOICELAB_SEEN_UTTS`` set to a folder, each rank appends the utterance ids of every
   batch it trains or validates on to ``<folder>/rank<R>.tsv`` (how multi-GPU runs prove that an
   epoch sees each utterance once across ranks); off by default;
9. ``--train_engine deepspeed``: the grad norm deepspeed reports is None between accumulation
   boundaries, which ``log_per_step`` formats with ``{:.6f}`` (a crash at the first logged
   non-boundary batch); it is logged as 0.0 there, as the torch_ddp path does;
10. ``--memory`` / ``--max-vram`` (issue 17): the memory modes of
    :mod:`voicelab.upstream.memory_modes` applied to the model before upstream wraps it, the
    optimizer swapped for the mode's, LoRA merged in every checkpoint (see :func:`fix_memory`).

This module must not import ``cosyvoice.llm``, ``cosyvoice.flow`` or
``cosyvoice.dataset.processor`` before the offline-feature fix is in place: they read the
``onnx_path`` environment variable at import time (through ``cosyvoice.utils.onnx``).
"""

from __future__ import annotations

import datetime
import io
import os
import runpy
import sys
from pathlib import Path
from typing import Any

#: Largest model (parameters) we agree to train on a CPU: the tiny model has 10.7 M.
MAX_CPU_PARAMS = 50_000_000

_FORCE_CPU_VARS = ("COSYVOICE_ORT_FORCE_CPU", "VOICELAB_ORT_FORCE_CPU")
_state: dict[str, Any] = {"device": "cuda", "timeout": 60, "max_cpu_params": MAX_CPU_PARAMS}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


# ------------------------------------------------------------------------------------------------
# Fix 1: offline features, and ONNX sessions that honour COSYVOICE_ORT_FORCE_CPU
# ------------------------------------------------------------------------------------------------
def fix_offline_features() -> None:
    """``cosyvoice.utils.onnx`` decides ``online_feature`` once, at import, from ``onnx_path``.

    With the variable set, every training step would run the 969 MB speech tokenizer ONNX
    (on the GPU, per batch) although the packed parquet already holds speech tokens and
    embeddings. We import that module first with the variable unset (so ``online_feature`` is
    False in this process and in forked DataLoader workers), and unset it again right after
    train.py's own ``os.environ['onnx_path'] = args.onnx_path`` (see :func:`_after_onnx_env`)
    so spawned processes do not see it either. ``--onnx_path`` is still passed (train.py's
    assignment fails on None) and names the base model dir, as the user's notes did.
    """
    os.environ.pop("onnx_path", None)
    import cosyvoice.utils.onnx as cv_onnx

    if getattr(cv_onnx, "online_feature", False):  # pragma: no cover - imported earlier with it set
        raise SystemExit("voicelab launcher: cosyvoice.utils.onnx was imported with onnx_path set")


def fix_ort_providers() -> None:
    """Upstream's ONNX sessions name providers themselves (the speech tokenizer CUDA only).

    Where the notes' ``COSYVOICE_ORT_FORCE_CPU=1`` is set, in CPU mode, or where this
    onnxruntime has no CUDA provider, any session upstream still creates runs on the CPU.
    """
    import onnxruntime as ort

    if getattr(ort.InferenceSession, "_voicelab_cpu", False):
        return
    cuda_ok = "CUDAExecutionProvider" in ort.get_available_providers()
    if not (any(_truthy(v) for v in _FORCE_CPU_VARS) or _state["device"] == "cpu" or not cuda_ok):
        return
    base = ort.InferenceSession

    class CpuInferenceSession(base):  # type: ignore[misc, valid-type]
        _voicelab_cpu = True

        def __init__(self, path_or_bytes: Any, sess_options: Any = None, **kwargs: Any) -> None:
            kwargs["providers"] = ["CPUExecutionProvider"]
            kwargs.pop("provider_options", None)
            super().__init__(path_or_bytes, sess_options, **kwargs)

    ort.InferenceSession = CpuInferenceSession


def _after_onnx_env(fn: Any) -> Any:
    """Wrap the first function train.py calls after setting ``onnx_path`` to unset it again."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        os.environ.pop("onnx_path", None)
        return fn(*args, **kwargs)

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


# ------------------------------------------------------------------------------------------------
# Fix 2: DataLoader with --num_workers 0; fixes re-applied in DataLoader workers
# ------------------------------------------------------------------------------------------------
def worker_init(worker_id: int) -> None:
    """Runs in each DataLoader worker: spawned workers start without this process's fixes."""
    os.environ.pop("onnx_path", None)
    fix_torchaudio_load()


def fix_dataloader(train_utils: Any) -> None:
    """train_utils builds DataLoaders with ``prefetch_factor=args.prefetch`` always; torch >= 2.0
    raises ValueError for any prefetch_factor when ``num_workers`` is 0."""
    from torch.utils.data import DataLoader

    def make_loader(*args: Any, **kwargs: Any) -> DataLoader:
        if int(kwargs.get("num_workers") or 0) == 0:
            kwargs.pop("prefetch_factor", None)
        else:
            kwargs.setdefault("worker_init_fn", worker_init)
        return DataLoader(*args, **kwargs)

    train_utils.DataLoader = make_loader


# ------------------------------------------------------------------------------------------------
# Fix 3: torchaudio.load without torchcodec/FFmpeg
# ------------------------------------------------------------------------------------------------
def _soundfile_load(
    uri: Any,
    frame_offset: int = 0,
    num_frames: int = -1,
    normalize: bool = True,
    channels_first: bool = True,
    format: str | None = None,
    buffer_size: int = 4096,
    backend: str | None = None,
) -> tuple[Any, int]:
    import soundfile as sf
    import torch

    if isinstance(uri, (bytes, bytearray)):
        uri = io.BytesIO(uri)
    stop = None if num_frames is None or num_frames < 0 else frame_offset + num_frames
    data, sr = sf.read(uri, start=frame_offset, stop=stop, dtype="float32", always_2d=True)
    wav = torch.from_numpy(data.T.copy() if channels_first else data)
    return wav, int(sr)


def fix_torchaudio_load() -> None:
    """torchaudio >= 2.9 routes ``load`` through torchcodec, which needs FFmpeg's shared
    libraries; upstream decodes the parquet's audio bytes with ``torchaudio.load``. The packed
    audio is WAV/FLAC, which soundfile reads (as torchaudio 2.3, upstream's pin, did)."""
    import torchaudio

    if getattr(torchaudio.load, "_voicelab", False):
        return
    try:
        major, minor = (int(x) for x in torchaudio.__version__.split("+")[0].split(".")[:2])
    except ValueError:  # pragma: no cover - odd version strings
        major, minor = 99, 0
    if (major, minor) < (2, 9):
        return
    _soundfile_load._voicelab = True  # type: ignore[attr-defined]
    torchaudio.load = _soundfile_load


# ------------------------------------------------------------------------------------------------
# Fix 4: ProcessGroup.options for cosyvoice_join
# ------------------------------------------------------------------------------------------------
def fix_process_group_options() -> None:
    """``cosyvoice_join`` reads ``group_join.options._timeout`` for its monitored barrier; torch
    removed ``ProcessGroup.options`` (present in 2.3, gone by 2.9), so every epoch crashes at its
    second batch, on GPU too. Restore it: train.py creates that group with ``--timeout``."""
    import torch.distributed as dist

    if hasattr(dist.ProcessGroup, "options"):
        return

    class _Options:
        def __init__(self, seconds: int) -> None:
            self._timeout = datetime.timedelta(seconds=seconds)

    dist.ProcessGroup.options = property(lambda self: _Options(int(_state["timeout"])))


# ------------------------------------------------------------------------------------------------
# Fix 5: CPU training (gloo) for tiny models
# ------------------------------------------------------------------------------------------------
def fix_cpu_mode(train_utils: Any) -> None:
    """Upstream's torch_ddp path assumes CUDA in three places: ``torch.cuda.set_device`` in
    ``init_distributed``, ``wrap_cuda_model`` (assert + ``model.cuda()``) and ``batch_forward``
    (``model(batch, device=int(LOCAL_RANK))``, i.e. cuda:N). For ``--device cpu`` (tiny models,
    tests, ``voicelab demo --tiny``) those become a no-op, a CPU DDP wrap, and a forward on the
    CPU device. Models above :data:`MAX_CPU_PARAMS` are refused: a real model on a CPU would
    take days, which the user should hear about."""
    import torch

    torch.cuda.set_device = lambda *_a, **_k: None  # only ever called by init_distributed here

    def wrap_cpu_model(args: Any, model: Any) -> Any:
        if args.train_engine != "torch_ddp":
            raise SystemExit(
                "voicelab launcher: CPU training supports --train_engine torch_ddp only"
            )
        n = sum(p.numel() for p in model.parameters())
        if n > int(_state["max_cpu_params"]):
            raise SystemExit(
                f"voicelab launcher: refusing to train a {n / 1e6:.0f} M-parameter model on the CPU"
                f" (limit {int(_state['max_cpu_params']) / 1e6:.0f} M): use a GPU (--device cuda)"
            )
        forward = model.forward
        cpu = torch.device("cpu")

        def forward_on_cpu(batch: Any, device: Any = None, *a: Any, **k: Any) -> Any:
            return forward(batch, cpu, *a, **k)

        model.forward = forward_on_cpu
        return torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

    train_utils.wrap_cuda_model = wrap_cpu_model


# ------------------------------------------------------------------------------------------------
# Fix 8: memory modes and --max-vram
# ------------------------------------------------------------------------------------------------
def fix_memory(train_utils: Any, kind: str, mode: str, max_vram: float | None) -> None:
    """Upstream's trainer with a memory mode, its checkpoints unchanged:

    * ``wrap_cuda_model``: first caps this process's CUDA memory (``--max-vram``) and applies
      the mode (checkpointing, LoRA) to the model, which train.py has already loaded its
      ``--checkpoint`` into (plain keys, also when resuming a LoRA run: the merged weights);
    * ``init_optimizer_and_scheduler``: upstream builds its optimizer and scheduler, then, for
      8bit/offload, ours replaces the optimizer (nothing was allocated yet: Adam's state is
      lazy) with upstream's scheduler class rebuilt on it; upstream's torch_ddp trainer saves no
      optimizer state, so its checkpoints do not change;
    * ``save_model``: with LoRA, the model handed to upstream's saver yields the merged plain
      state dict, so every ``epoch_N_whole.pt`` is an upstream-loadable ``llm.pt``. A resumed
      LoRA run starts fresh adapters on the merged weights (same function, new Adam state).
    """
    from voicelab.upstream import memory_modes as mm

    features = tuple(mode.split("+"))
    wrap = train_utils.wrap_cuda_model
    init_opt = train_utils.init_optimizer_and_scheduler
    save = train_utils.save_model

    def wrap_with_modes(args: Any, model: Any) -> Any:
        if _state["device"] == "cuda":
            mm.cap_vram(max_vram, f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        applied = mm.apply_modes(model, kind, features)
        print(
            f"voicelab launcher: memory mode {'+'.join(applied.features)}, trainable"
            f" {applied.trainable / 1e6:.1f} M of {applied.total / 1e6:.1f} M parameters",
            flush=True,
        )
        return wrap(args, model)

    def init_with_modes(args: Any, configs: Any, model: Any, gan: bool) -> Any:
        out = init_opt(args, configs, model, gan)
        if gan or not ({"8bit", "offload"} & set(features)) or args.train_engine != "torch_ddp":
            return out
        model, _, scheduler, opt_d, sched_d = out
        conf = configs["train_conf"]
        optimizer = mm.make_optimizer(
            model.parameters(),
            features,
            optim=conf["optim"],
            device=_state["device"],
            **conf["optim_conf"],
        )
        if conf["scheduler"] == "constantlr":
            scheduler = type(scheduler)(optimizer)
        else:
            scheduler = type(scheduler)(optimizer, **conf["scheduler_conf"])
        return model, optimizer, scheduler, opt_d, sched_d

    class _Merged:
        """What upstream's ``save_model`` reads (``model.module.state_dict()``), LoRA merged."""

        def __init__(self, ddp: Any) -> None:
            self.module = self
            self._net = getattr(ddp, "module", ddp)

        def state_dict(self) -> dict[str, Any]:
            return mm.plain_state_dict(self._net)

    def save_merged(model: Any, model_name: str, info_dict: dict[str, Any]) -> Any:
        return save(_Merged(model) if "lora" in features else model, model_name, info_dict)

    train_utils.wrap_cuda_model = wrap_with_modes
    train_utils.init_optimizer_and_scheduler = init_with_modes
    train_utils.save_model = save_merged


# ------------------------------------------------------------------------------------------------
# Entry
# ------------------------------------------------------------------------------------------------
def _split(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        ours, theirs = argv[:i], argv[i + 1 :]
    else:
        ours, theirs = [], argv
    opts: dict[str, str] = {}
    it = iter(ours)
    for a in it:
        if not a.startswith("--"):
            raise SystemExit(f"voicelab launcher: unexpected argument {a!r}")
        key, _, val = a[2:].partition("=")
        opts[key] = val if _ else next(it, "")
    return opts, theirs


def _arg_value(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def apply_fixes(
    vendor_root: Path,
    device: str = "cuda",
    train_args: list[str] | None = None,
    memory: str | None = None,
    max_vram: float | None = None,
) -> None:
    """Put the vendor on ``sys.path`` and apply every runtime fix (in this order)."""
    for p in (vendor_root / "third_party" / "Matcha-TTS", vendor_root):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    _state["device"] = device
    timeout = _arg_value(train_args or [], "--timeout")
    if timeout:
        _state["timeout"] = int(timeout)
    from voicelab.upstream.inference_fixes import quiet_pkg_resources

    quiet_pkg_resources()  # pyworld's import would print it into every training log
    fix_offline_features()
    fix_ort_providers()
    fix_torchaudio_load()
    fix_process_group_options()
    import cosyvoice.utils.train_utils as train_utils

    fix_dataloader(train_utils)
    train_utils.save_model = keep_first_init(train_utils.save_model)
    # init_distributed is the first upstream call after train.py sets onnx_path.
    train_utils.init_distributed = _after_onnx_env(train_utils.init_distributed)
    if device == "cpu":
        fix_cpu_mode(train_utils)
    train_utils.update_parameter_and_lr = grad_norm_never_none(train_utils.update_parameter_and_lr)
    seen_dir = os.environ.get(SEEN_UTTS_ENV)
    if seen_dir:
        record_seen_utts(train_utils, Path(seen_dir))
    if (memory and memory != "full") or max_vram is not None:
        kind = _arg_value(train_args or [], "--model") or "llm"
        fix_memory(train_utils, kind, memory or "full", max_vram)


# ------------------------------------------------------------------------------------------------
# Fix 7: a resumed run keeps its own init.pt
# ------------------------------------------------------------------------------------------------
def keep_first_init(save_model: Any) -> Any:
    """train.py saves ``init.pt`` (a full model copy, 2 GB for the llm) at every start; on
    ``--resume`` that would replace the run's real starting weights with the resumed epoch's.
    The first ``init.pt`` of a run dir is kept; every other checkpoint is saved as upstream does."""

    def wrapper(model: Any, model_name: str, info_dict: dict[str, Any]) -> Any:
        if model_name == "init" and (Path(info_dict["model_dir"]) / "init.pt").exists():
            print("voicelab launcher: keeping the run's first init.pt", flush=True)
            return None
        return save_model(model, model_name, info_dict)

    wrapper.__wrapped__ = save_model  # type: ignore[attr-defined]
    return wrapper


# ------------------------------------------------------------------------------------------------
# Fix 9: deepspeed's grad norm between accumulation boundaries
# ------------------------------------------------------------------------------------------------
def grad_norm_never_none(update: Any) -> Any:
    """``model.get_global_grad_norm()`` is None until deepspeed's first optimizer step and
    between boundaries; upstream formats it as a float. 0.0 is what torch_ddp logs there."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        info = update(*args, **kwargs)
        if info.get("grad_norm") is None:
            info["grad_norm"] = 0.0
        return info

    wrapper.__wrapped__ = update  # type: ignore[attr-defined]
    return wrapper


# ------------------------------------------------------------------------------------------------
# 8: which utterances each rank saw (multi-GPU proofs)
# ------------------------------------------------------------------------------------------------
SEEN_UTTS_ENV = "VOICELAB_SEEN_UTTS"


def record_seen_utts(train_utils: Any, folder: Path) -> None:
    """Wrap ``batch_forward`` (every TRAIN and CV batch passes through it) to append
    ``tag, epoch, utt`` lines to ``rank<R>.tsv``; R is the global rank torchrun sets."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"rank{int(os.environ.get('RANK', 0))}.tsv"
    batch_forward = train_utils.batch_forward

    def wrapper(model: Any, batch: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        info = args[1] if len(args) > 1 else kwargs.get("info_dict", {})
        tag, epoch = info.get("tag", "?"), info.get("epoch", -1)
        with out.open("a", encoding="utf-8") as f:
            f.writelines(f"{tag}\t{epoch}\t{u}\n" for u in batch.get("utts", []))
        return batch_forward(model, batch, *args, **kwargs)

    wrapper.__wrapped__ = batch_forward  # type: ignore[attr-defined]
    train_utils.batch_forward = wrapper
    # executor.py binds batch_forward by name at import: train.py imports it after this runs,
    # but a module imported earlier keeps the old name, so rebind it there too.
    executor = sys.modules.get("cosyvoice.utils.executor")
    if executor is not None:
        executor.batch_forward = wrapper


def read_seen_utts(folder: Path) -> dict[tuple[str, int], dict[int, list[str]]]:
    """``{(tag, epoch): {rank: [utt, ...]}}`` from the files :func:`record_seen_utts` wrote."""
    seen: dict[tuple[str, int], dict[int, list[str]]] = {}
    for f in sorted(folder.glob("rank*.tsv")):
        rank = int(f.stem[4:])
        for line in f.read_text("utf-8").splitlines():
            tag, epoch, utt = line.split("\t")
            seen.setdefault((tag, int(epoch)), {}).setdefault(rank, []).append(utt)
    return seen


# ------------------------------------------------------------------------------------------------
# Fix 6: TensorBoard events beside the run, not in the current folder
# ------------------------------------------------------------------------------------------------
def with_tensorboard_dir(train_args: list[str]) -> list[str]:
    """train.py's default ``--tensorboard_dir`` is ``tensorboard`` relative to the current
    folder, which in the notes' workflow is the vendor checkout. ``voicelab train`` always passes
    the workspace's dir; a hand-run launch without one gets ``<model_dir>/tensorboard``."""
    if _arg_value(train_args, "--tensorboard_dir") is not None:
        return train_args
    model_dir = _arg_value(train_args, "--model_dir") or "."
    return [*train_args, "--tensorboard_dir", str(Path(model_dir) / "tensorboard")]


def main(argv: list[str] | None = None) -> None:
    opts, train_args = _split(list(sys.argv[1:] if argv is None else argv))
    root = opts.get("vendor-root") or os.environ.get("VOICELAB_COSYVOICE_DIR")
    if not root:
        raise SystemExit("voicelab launcher: --vendor-root is required")
    vendor_root = Path(root).resolve()
    train_py = vendor_root / "cosyvoice" / "bin" / "train.py"
    if not train_py.is_file():
        raise SystemExit(f"voicelab launcher: {train_py} not found")
    device = opts.get("device", "cuda")
    if device not in ("cpu", "cuda"):
        raise SystemExit(f"voicelab launcher: --device must be cpu or cuda, not {device!r}")
    if opts.get("max-cpu-params"):
        _state["max_cpu_params"] = int(float(opts["max-cpu-params"]))
    max_vram = float(opts["max-vram"]) if opts.get("max-vram") else None
    apply_fixes(vendor_root, device, train_args, opts.get("memory"), max_vram)
    train_args = with_tensorboard_dir(train_args)
    sys.argv = [str(train_py), *train_args]
    runpy.run_path(str(train_py), run_name="__main__")


if __name__ == "__main__":
    main()
