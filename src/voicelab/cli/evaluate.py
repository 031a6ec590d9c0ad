"""``voicelab eval``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from voicelab.cli.main import Ctx, pass_ctx
from voicelab.console import echo

if TYPE_CHECKING:
    from voicelab.evaluation.during_training import TrainingEvaluator
    from voicelab.stages.train import TrainOptions
    from voicelab.workspace import Workspace


def _f(v: object, digits: int = 3) -> str:
    return "-" if not isinstance(v, (int, float)) else f"{v:.{digits}f}"


@click.command("eval")
@click.option("--epochs", metavar="LIST", help="llm epochs: 4,5,6, all or last:N (default: all).")
@click.option("--checkpoints", metavar="PT,...", help="llm checkpoint files to evaluate.")
@click.option("--voice", "voices", multiple=True, metavar="DIR", help="An exported voice dir.")
@click.option("--lines", type=int, default=20, show_default=True, help="Size of the set.")
@click.option("--seed", type=int, default=0, show_default=True, help="Set draw and sampling.")
@click.option("--no-fixed", is_flag=True, help="Dev lines only (no fixed zh/en sentences).")
@click.option("--new-set", is_flag=True, help="Draw the evaluation set again (eval/set.json).")
@click.option("--run", metavar="NAME", help="Run name: resume or extend it (default: new).")
@click.option("--no-baselines", is_flag=True, help="Skip the base model and real recordings.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cuda", "cpu"]),
    default="auto",
    show_default=True,
    help="For ASR and the speaker model (synthesis uses CUDA when present).",
)
@click.option("--fp16", is_flag=True, help="Synthesize in fp16 (CUDA).")
@click.option("--asr-model", metavar="NAME|DIR", help="Whisper model (default: prepare's).")
@click.option(
    "--funasr/--no-funasr", default=None, help="Paraformer for zh lines (default: if installed)."
)
@click.option(
    "--speaker-model",
    default="campplus",
    show_default=True,
    metavar="campplus|resemblyzer|PATH.onnx",
    help="Speaker encoder for similarity.",
)
@pass_ctx
def evaluate(ctx: Ctx, **kw: object) -> None:
    """Score epochs against the base model and the real voice: CER/WER, similarity, DNSMOS.

    \b
    Every candidate speaks the same lines (eval/set.json: dev texts + fixed zh/en sentences);
    results go to eval/<run>/metrics.tsv, per-line JSON and audio, and the report.
    `voicelab export` then picks the best epoch by default (rule best-eval). Examples:
      voicelab eval                         # every epoch on disk + the two baselines
      voicelab eval --epochs 4,6 --lines 10
      voicelab eval --run 20260101-120000   # resume an interrupted run
    """
    from voicelab.evaluation.run import EvalOptions, run_eval
    from voicelab.runner.report import build_report

    ws = ctx.workspace()
    kw["fixed"] = not kw.pop("no_fixed")
    kw["baselines"] = not kw.pop("no_baselines")
    kw["voices"] = tuple(kw["voices"])  # type: ignore[arg-type]
    res = run_eval(ws, EvalOptions(**kw))  # type: ignore[arg-type]
    echo(f"{res.lines} lines; results in {res.run_dir}")
    echo(f"{'candidate':<24} {'CER/WER':>8} {'SIM':>6} {'SIM-ref':>8} {'MOS':>5} {'dur':>5}")
    for r in res.rows:
        echo(
            f"{r['candidate']:<24} {_f(r['err']):>8} {_f(r['sim']):>6} {_f(r['sim_ref']):>8} "
            f"{_f(r['mos'], 2):>5} {_f(r['dur_ratio'], 2):>5}"
        )
    for name, secs in res.synth_seconds.items():
        echo(f"  {name}: synthesized in {secs:.1f} s")
    echo(f"best (rule best-eval): {', '.join(res.best) or 'none within the error margin'}")
    echo(f"report: {build_report(ws)}")


def _mark_early_stop(ws: Workspace, model: str, watcher: TrainingEvaluator) -> None:
    """An early stop ends the stage as done (not interrupted): `voicelab run` must not resume
    the training that was stopped on purpose."""
    from voicelab.evaluation.during_training import ready_epochs
    from voicelab.state import load_record, save_record

    rec = load_record(ws, f"train_{model}")
    if rec is None:
        return
    rec.status, rec.error = "done", None
    rec.figures.update(
        {
            "epochs": len(ready_epochs(ws)),
            "early_stop": watcher.stopper.reason,
            "best_eval": watcher.best,
            "run_dir": str(ws.exp_dir(model)),
        }
    )
    save_record(ws, rec)


def train_with_eval(
    ws: Workspace, model: str, opts: TrainOptions, every: int | None, patience: int | None
) -> None:
    """``voicelab train --eval-every K --early-stop P`` (voicelab.evaluation.during_training)."""
    from voicelab.errors import ConfigError
    from voicelab.evaluation.during_training import TrainingEvaluator
    from voicelab.stages.train import run_train

    if model != "llm" or not every:
        raise ConfigError(
            "--eval-every/--early-stop evaluate llm epochs",
            "use: voicelab train llm --eval-every K",
        )
    watcher = TrainingEvaluator(ws, every, patience or 0, eval_args=("--device", opts.device))
    if opts.dry_run:
        run_train(ws, model, opts)
        echo("checked (dry run): nothing launched, nothing evaluated")
        return
    watcher.start()
    try:
        res = run_train(ws, model, opts)
    except KeyboardInterrupt:
        if not watcher.stopped:
            raise
        watcher.close()
        _mark_early_stop(ws, model, watcher)
        echo(f"early stop: {watcher.stopper.reason}")
    else:
        try:
            watcher.finish()
        except KeyboardInterrupt:  # a stop signal raced with the end of training: it is over
            if not watcher.stopped:
                raise
        echo(f"{model}: {res.epochs_done}/{res.max_epoch} epochs in {res.run_dir}")
    echo(f"evaluated epochs: {', '.join(map(str, watcher.done)) or 'none'} (eval/{watcher.run})")
    echo(f"best so far: {watcher.best or '-'}; next: voicelab export (rule best-eval)")


commands = [evaluate]
