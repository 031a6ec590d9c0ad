"""``voicelab run``, ``voicelab status``, ``voicelab demo`` and ``voicelab report``."""

from __future__ import annotations

import time
from typing import Any

import click

from voicelab.cli.main import Ctx, pass_ctx
from voicelab.console import echo
from voicelab.errors import ConfigError
from voicelab.workspace import Workspace

STAGE_HELP = "vendor, download, prepare, features, pack, train_llm, train_flow, export, audition"


def _preflight(ws: Workspace) -> None:
    from voicelab.doctor import run_checks

    failed = [c for c in run_checks(ws) if c.status == "fail" and c.required]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more: voicelab doctor)" if len(failed) > 1 else ""
        raise ConfigError(f"doctor: {first.name}: {first.detail}{more}", first.fix)


def _print_stage(ws: Workspace) -> Any:
    from voicelab.runner.report import build_report

    def on_stage(name: str, what: str, detail: str) -> None:
        if what == "skip":
            echo(f"[skip] {name}: {detail}")
        elif what == "run":
            echo(f"[run ] {name} ({detail})")
        else:
            echo(f"[done] {name} in {detail}")
            build_report(ws)

    return on_stage


def _finish(ws: Workspace, opts: Any) -> None:
    from voicelab.runner.pipeline import default_stages, stage_states
    from voicelab.runner.report import build_report

    report = build_report(ws)
    states = {s.name: s for s in stage_states(ws, default_stages(), opts)}
    if states["export"].state == "done":
        echo(f"\nvoice:  {ws.voice_dir}")
        echo(f'try:    voicelab -w "{ws.root}" say "你好，这是我的声音。" --out hello.wav')
    echo(f"report: {report}")


def _source_check(ws: Workspace, opts: Any) -> None:
    """Prepare will need the recordings: say so now, not after the vendor and the download."""
    from voicelab.runner.pipeline import default_stages, select, stage_states
    from voicelab.workspace import check_source_dir

    stages = default_stages()
    if "prepare" not in {s.name for s in select(stages, opts)}:
        return
    state = {s.name: s for s in stage_states(ws, stages, opts)}["prepare"]
    if opts.force or state.state != "done":
        check_source_dir(ws.wav_dir)


def _run_pipeline(ws: Workspace, opts: Any, skip_doctor: bool) -> None:
    from voicelab.runner.pipeline import default_stages, run_pipeline, save_run_options
    from voicelab.runner.report import build_report

    _source_check(ws, opts)
    save_run_options(ws, opts)
    if not skip_doctor:
        _preflight(ws)
    try:
        run_pipeline(ws, default_stages(), opts, on_stage=_print_stage(ws))
    finally:
        build_report(ws)
    _finish(ws, opts)


@click.command()
@click.option("--wav-dir", metavar="DIR", help="Folder of the speaker's recordings.")
@click.option("--speaker", help="Speaker id (first run: required).")
@click.option(
    "--train-flow/--no-train-flow", default=None, help="Also fine-tune the flow model (saved)."
)
@click.option("--from", "from_stage", metavar="STAGE", help=f"First stage ({STAGE_HELP}).")
@click.option("--until", "until_stage", metavar="STAGE", help="Last stage.")
@click.option("--force", is_flag=True, help="Redo the selected stages even when up to date.")
@click.option("--skip-doctor", is_flag=True, help="Do not run the doctor preflight.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Default: auto.")
@click.option("--epochs", type=int, help="Training epochs (saved in voicelab.toml).")
@click.option("--gpus", type=int, help="GPUs to train on.")
@click.option("--asr", type=click.Choice(["faster-whisper", "funasr", "transcripts"]))
@click.option("--whisper-model", help="Whisper model for prepare (default large-v3).")
@click.option("--source", type=click.Choice(["modelscope", "huggingface"]), help="Model hub.")
@pass_ctx
def run(
    ctx: Ctx,
    wav_dir: str | None,
    speaker: str | None,
    train_flow: bool | None,
    from_stage: str | None,
    until_stage: str | None,
    force: bool,
    skip_doctor: bool,
    device: str | None,
    epochs: int | None,
    gpus: int | None,
    asr: str | None,
    whisper_model: str | None,
    source: str | None,
) -> None:
    """From a folder of recordings to a voice, in one resumable command.

    \b
    Stages, each skipped when up to date: vendor, download, prepare, features, pack,
    train_llm, train_flow (--train-flow), export, audition. Ctrl-C and run again to resume.
    example:
      voicelab run --wav-dir "/mnt/c/AIGC/数据集/xuan" --speaker xuan
    """
    from voicelab import config
    from voicelab.runner.pipeline import run_options
    from voicelab.workspace import check_source_dir, check_workspace_path

    # Cheap checks first, before anything is saved or downloaded (5 GB).
    saved = {
        "train": config.check_flags("train", {"epochs": epochs, "gpus": gpus}),
        "prepare": config.check_flags("prepare", {"asr": asr, "whisper_model": whisper_model}),
        "download": {"source": source},
    }
    if wav_dir:
        check_source_dir(wav_dir)
    ws = ctx.workspace(must_exist=False)
    if speaker or wav_dir or not ws.config_file.is_file():
        if not (speaker or ws.config.speaker):
            raise ConfigError("no voice workspace yet", "give --speaker NAME and --wav-dir DIR")
        check_workspace_path(ws.root)
        ws = Workspace.init(ctx.workspace_arg, speaker or ws.config.speaker, wav_dir)
    ctx.lock(ws)
    for section, values in saved.items():
        for key, value in values.items():
            if value is not None:
                ws.set_option(section, key, value)
    opts = run_options(
        ws,
        train_flow=train_flow,
        device=device,
        from_stage=from_stage,
        until_stage=until_stage,
        force=force,
    )
    _run_pipeline(ws, opts, skip_doctor)


@click.command()
@click.option("--train-flow", is_flag=True, help="Judge the flow stage too.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def status(ctx: Ctx, train_flow: bool, as_json: bool) -> None:
    """One line per stage: done, stale (and why), pending, failed (and the error)."""
    import json

    from voicelab.runner.pipeline import default_stages, figure_line, run_options, stage_states

    ws = ctx.workspace()
    states = stage_states(ws, default_stages(), run_options(ws, train_flow=train_flow or None))
    if as_json:
        echo(
            json.dumps(
                [
                    {"stage": s.name, "state": s.state, "reason": s.reason, "figures": s.figures}
                    for s in states
                ],
                ensure_ascii=False,
                indent=2,
                default=str,
            )
        )
        return
    echo(f"workspace {ws.root} (speaker {ws.config.speaker})")
    for s in states:
        when = ""
        if s.record and s.record.finished:
            when = time.strftime("%m-%d %H:%M", time.localtime(s.record.finished))
            when += f" {s.record.seconds:6.1f}s"
        detail = figure_line(s) if s.state == "done" else s.reason
        echo(f"  {s.name:<11} {s.state:<8} {when:<20} {detail}")


@click.command()
@click.option("--real", is_flag=True, help="Download Fun-CosyVoice3-0.5B and fine-tune on the GPU.")
@click.option("--tiny", is_flag=True, help="Tiny random model on the CPU (default without GPU).")
@click.option("--epochs", type=int, help="Training epochs (tiny: 2).")
@click.option("--force", is_flag=True, help="Redo every stage.")
@pass_ctx
def demo(ctx: Ctx, real: bool, tiny: bool, epochs: int | None, force: bool) -> None:
    """Run the whole pipeline on a built-in speaker corpus (espeak-ng, known transcripts).

    Workspace: workflows/demo under the VoiceLab root, or -w DIR given on the command line (a
    new folder or an earlier demo's; never another voice's workspace, and not the one
    VOICELAB_WORKSPACE selects). A second run skips every stage that is up to date.
    """
    from click.core import ParameterSource

    from voicelab.console import setup_logging
    from voicelab.runner.demo import check_demo_root, demo_root, next_steps, plan_demo

    if real and tiny:
        raise ConfigError("--real and --tiny contradict each other", "choose one")
    parent = click.get_current_context().find_root()
    from_env = parent.get_parameter_source("workspace") == ParameterSource.ENVIRONMENT
    root = demo_root(ctx.workspace_arg, from_env)
    check_demo_root(root)  # before anything is written, the log included
    stamp = time.strftime("%Y%m%d-%H%M%S")
    setup_logging(ctx.verbose, ctx.quiet, log_file=root / "logs" / f"{stamp}-demo.log")
    plan = plan_demo(
        root, real=real, tiny=True if tiny else (False if real else None), epochs=epochs
    )
    plan.options.force = force
    ctx.lock(plan.workspace)  # also starts the demo's log in its workspace
    kind = "tiny random CosyVoice 3 on the CPU" if plan.tiny else "Fun-CosyVoice3-0.5B on the GPU"
    echo(f"demo: {kind}; ASR {plan.asr}; workspace {plan.workspace.root}")
    t0 = time.time()
    _run_pipeline(plan.workspace, plan.options, skip_doctor=True)
    echo(f"demo finished in {time.time() - t0:.0f} s")
    for line in next_steps(plan.workspace.root):
        echo(line)


@click.command()
@pass_ctx
def report(ctx: Ctx) -> None:
    """Rebuild reports/index.html (static; opens from disk)."""
    from voicelab.runner.report import build_report

    echo(str(build_report(ctx.workspace())))


commands = [run, status, demo, report]
