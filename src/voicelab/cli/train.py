"""``voicelab train llm|flow`` and ``voicelab tensorboard``."""

from __future__ import annotations

import click
from click.core import ParameterSource

from voicelab.cli.main import Ctx, pass_ctx
from voicelab.console import echo

DEFAULT = ParameterSource.DEFAULT


@click.command("train")
@click.argument("model", type=click.Choice(["llm", "flow"]))
@click.option(
    "--device",
    type=click.Choice(["auto", "cuda", "cpu"]),
    default="auto",
    show_default=True,
    help="cpu (gloo) is for the tiny model only.",
)
@click.option("--gpus", type=int, metavar="N", help="Processes per machine (GPUs). Default 1.")
@click.option("--gpu-ids", metavar="IDS", help="GPUs to use, e.g. 0,1 (CUDA_VISIBLE_DEVICES).")
@click.option("--nnodes", type=int, default=1, show_default=True, help="Machines (torchrun).")
@click.option("--node-rank", type=int, default=0, show_default=True)
@click.option("--master-addr", metavar="HOST", help="Rank-0 machine when --nnodes > 1.")
@click.option("--master-port", type=int, default=29500, show_default=True)
@click.option(
    "--engine",
    type=click.Choice(["torch_ddp", "deepspeed"]),
    default="torch_ddp",
    show_default=True,
)
@click.option(
    "--trainer",
    type=click.Choice(["voicelab", "upstream"]),
    default=None,
    help="voicelab: VoiceLab's engine (default; voicelab.toml [train] trainer);"
    " upstream: upstream's train.py (with --engine).",
)
@click.option("--keep", type=int, metavar="N", help="Keep only the newest N epoch checkpoints.")
@click.option(
    "--compile/--no-compile",
    default=None,
    help="torch.compile the model's blocks (voicelab; default: on a GPU in the full memory mode,"
    " eager if compiling fails).",
)
@click.option(
    "--cuda-graphs/--no-cuda-graphs",
    default=None,
    help="the compiled blocks replay CUDA graphs (default: on one GPU in the full memory"
    " mode; the flow only on H100-class GPUs, padded to as few pass shapes as the run repays"
    " compiling; docs/engine.md).",
)
@click.option("--amp/--no-amp", default=None, help="bf16 mixed precision (default: on for GPU).")
@click.option("--epochs", type=int, help="max_epoch (default sized to the data, usually 10).")
@click.option(
    "--batch-frames",
    type=int,
    metavar="N",
    help="max_frames_in_batch (50 per second of audio; default from GPU memory).",
)
@click.option("--accum-grad", type=int, metavar="N", help="Batches per optimizer step (2).")
@click.option("--lr", type=float, help="Learning rate (1e-5; above 1e-4 is warned about).")
@click.option("--num-workers", type=int, metavar="N", help="DataLoader workers (4 GPU, 1 CPU).")
@click.option("--prefetch", type=int, metavar="N", help="Batches prefetched per worker (2).")
@click.option(
    "--save-per-step",
    type=int,
    metavar="N",
    help="Also run CV and save a checkpoint every N steps: slow, about 2 GB each.",
)
@click.option("--log-interval", type=int, metavar="N", help="Log every N batches (10).")
@click.option("--cpus", metavar="LIST", help="CPU affinity, e.g. 0-11 (the notes' taskset).")
@click.option("--resume", is_flag=True, help="Continue the existing run after its last epoch.")
@click.option("--new", is_flag=True, help="Start a fresh run; the existing one is kept as .N.")
@click.option("--checkpoint", metavar="PT", help="Start weights (default: the base model's).")
@click.option("--dry-run", is_flag=True, help="Check, preview the config and launch.sh, stop.")
@click.option(
    "--eval-every",
    type=int,
    metavar="K",
    help="llm: run voicelab eval on every K-th epoch while training (same GPU).",
)
@click.option(
    "--early-stop",
    type=int,
    metavar="P",
    help="With --eval-every: stop when P evaluations in a row bring no improvement.",
)
@click.option(
    "--memory",
    metavar="MODE",
    help="auto (default), full, checkpointing, 8bit, offload, lora, or a combination such as "
    "checkpointing+8bit: how training fits the GPU (preflight explains the choice).",
)
@click.option(
    "--max-vram",
    type=float,
    metavar="GB",
    help="GiB training may use on each GPU (e.g. when sharing it with a desktop).",
)
@pass_ctx
def train(ctx: Ctx, model: str, **kw: object) -> None:
    """Fine-tune the llm (or flow) on this voice's packed data (VoiceLab's engine, or upstream's
    train.py with --trainer upstream).

    \b
    Examples:
      voicelab train llm                      # 1 GPU, bf16, defaults sized to the data
      voicelab train llm --resume             # continue after the last finished epoch
      voicelab train flow --gpus 2 --cpus 0-11
      voicelab train llm --device cpu         # tiny model only (voicelab demo --tiny)
      voicelab train llm --max-vram 6         # fit 6 GiB (auto: checkpointing, LoRA ...)
    """
    from voicelab.contract import RunOptions, resolve
    from voicelab.stages.train import TrainOptions, run_train, section_of

    ws = ctx.workspace()
    eval_every, early_stop = kw.pop("eval_every"), kw.pop("early_stop")
    # Flags left at their defaults are not given: voicelab.toml ([train_flow], then [train])
    # and the Options defaults fill them, by the one rule of voicelab.contract.resolve.
    click_ctx = click.get_current_context()
    given = {k: v for k, v in kw.items() if click_ctx.get_parameter_source(k) != DEFAULT}
    section = section_of(model)
    run_opts = RunOptions(overrides={section: given})
    opts = resolve(ws, TrainOptions, section, run_opts, also=("train",))
    if eval_every or early_stop:
        from voicelab.cli.evaluate import train_with_eval

        train_with_eval(ws, model, opts, eval_every, early_stop)  # type: ignore[arg-type]
        return
    res = run_train(ws, model, opts)
    if opts.dry_run:
        echo(f"checked; config and launch.sh previewed in {res.run_dir} (nothing launched)")
        return
    for line in res.summary_lines():
        echo(line)
    echo(f"next: voicelab checkpoints {model}   then   voicelab export")


@click.command("tensorboard")
@click.option("--port", type=int, default=6006, show_default=True)
@click.option("--print", "print_only", is_flag=True, help="Only print the command.")
@pass_ctx
def tensorboard(ctx: Ctx, port: int, print_only: bool) -> None:
    """Show the training runs' event files (loss, accuracy, learning rate) in TensorBoard."""
    import importlib.util
    import os
    import sys

    from voicelab.errors import EnvironmentProblem, InputError
    from voicelab.runner.report import tensorboard_command

    ws = ctx.workspace()
    logdir = ws.tensorboard_root
    cmd = f"{tensorboard_command(ws)} --port {port}"
    if print_only:
        echo(cmd)
        return
    if not logdir.is_dir() or not any(logdir.rglob("events.out.tfevents.*")):
        raise InputError(f"no training event files under {logdir}", "run: voicelab train llm")
    if importlib.util.find_spec("tensorboard") is None:
        raise EnvironmentProblem(
            "tensorboard is not installed here",
            f"pip install tensorboard (the train extra has it), then run: {cmd}",
        )
    echo(f"{cmd}   (Ctrl-C to stop)")
    argv = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)]
    os.execv(sys.executable, argv)


commands = [train, tensorboard]
