"""``python -m voicelab.upstream.engine``: the process torchrun starts for ``--trainer voicelab``.

Arguments mirror upstream's train.py where they mean the same (``--model --config --train_data
--cv_data --qwen_pretrain_path --checkpoint --model_dir --tensorboard_dir --use_amp``); the rest
are ours (``--vendor-root --device --keep --compile --cuda-graphs --seed --quantum
--max-steps``, and issue 17's ``--memory MODE --max-vram GB``)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m voicelab.upstream.engine")
    p.add_argument("--vendor-root", default=os.environ.get("VOICELAB_COSYVOICE_DIR"))
    p.add_argument("--model", required=True, choices=["llm", "flow"])
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--train_data", required=True, type=Path)
    p.add_argument("--cv_data", required=True, type=Path)
    p.add_argument("--qwen_pretrain_path")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--model_dir", required=True, type=Path)
    p.add_argument("--tensorboard_dir", type=Path)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--use_amp", action="store_true")
    p.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default=os.environ.get("VOICELAB_ENGINE_COMPILE", "auto"),
    )
    p.add_argument(
        "--cuda-graphs",
        choices=["auto", "on", "off"],
        default=os.environ.get("VOICELAB_ENGINE_CUDAGRAPHS", "auto"),
        help="the compiled blocks replay CUDA graphs (every pass padded to one of few shapes)",
    )
    p.add_argument("--keep", type=int)
    p.add_argument("--seed", type=int, default=1986)
    p.add_argument("--quantum", type=int, default=32)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--memory", default="full", help="memory mode, e.g. checkpointing+8bit+lora")
    p.add_argument("--max-vram", type=float, help="GiB this process may use on its GPU")
    p.add_argument(
        "--warmup",
        default=os.environ.get("VOICELAB_ENGINE_WARMUP", "auto"),
        choices=["auto", "on", "off"],
        help="one untrained step of the largest batch first (auto: on a GPU)",
    )
    p.add_argument(
        "--fuse",
        default=os.environ.get("VOICELAB_ENGINE_FUSE", "auto"),
        choices=["auto", "on", "off"],
        help="llm: pack an optimizer step's batches into one pass (off: padded batches)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if not a.vendor_root:
        raise SystemExit("voicelab engine: --vendor-root is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from voicelab.upstream.engine.model import prepare_runtime

    prepare_runtime(Path(a.vendor_root).resolve())
    from voicelab.memory import parse_mode
    from voicelab.upstream.engine.loop import EngineArgs, run
    from voicelab.upstream.engine.memory import hooks_for

    mode = "+".join(parse_mode(a.memory, a.model) or ("full",))
    if a.checkpoint is not None and not a.checkpoint.is_file():
        raise SystemExit(f"voicelab engine: checkpoint {a.checkpoint} not found")
    run(
        EngineArgs(
            model=a.model,
            config=a.config,
            train_data=a.train_data,
            cv_data=a.cv_data,
            model_dir=a.model_dir,
            tensorboard_dir=a.tensorboard_dir,
            qwen_pretrain_path=a.qwen_pretrain_path,
            checkpoint=a.checkpoint,
            device=a.device,
            amp=a.use_amp,
            compile=a.compile,
            cuda_graphs=a.cuda_graphs,
            keep=a.keep,
            seed=a.seed,
            quantum=a.quantum,
            max_steps=a.max_steps,
            memory=mode,
            max_vram=a.max_vram,
            fuse=a.fuse,
            warmup=a.warmup,
            hooks=hooks_for(mode, a.model, a.model_dir),
        )
    )


if __name__ == "__main__":
    main()
