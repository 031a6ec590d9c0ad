"""``voicelab checkpoints`` and ``voicelab export``."""

from __future__ import annotations

import json
import sys

import click

from voicelab.cli.main import Ctx, pass_ctx
from voicelab.console import echo

RULE_METAVAR = "RULE"
RULE_TEXT = (
    "last:N (default last:3, or the locked epoch), best-cv:N, epochs:4,5,6, "
    "step:S1,S2, step:last:N, step:best-cv:N, best-eval[:N] (default once voicelab eval ran)"
)


def _fmt_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


# voicelab eval's columns: error rate, speaker similarity, DNSMOS; "!" = beyond the error margin.
EVAL_COLUMNS = ("CER/WER", "SIM", "MOS")


def _eval_cells(c: object) -> tuple[str, ...]:
    ev = getattr(c, "eval", None)
    if not ev:
        return ("-",) * len(EVAL_COLUMNS)
    flag = "" if getattr(c, "eval_ok", False) else "!"
    return (_fmt(ev.get("err"), 3) + flag, _fmt(ev.get("sim"), 3), _fmt(ev.get("mos"), 2))


@click.command("checkpoints")
@click.argument("model", type=click.Choice(["llm", "flow"]), default="llm")
@click.option("--select", "rule", metavar=RULE_METAVAR, help=f"Mark the chosen ones: {RULE_TEXT}.")
@click.option("--lock", "lock", type=int, metavar="N", help="Lock llm epoch N in voicelab.toml.")
@click.option("--unlock", is_flag=True, help="Remove the locked epoch.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_ctx
def checkpoints(
    ctx: Ctx, model: str, rule: str | None, lock: int | None, unlock: bool, as_json: bool
) -> None:
    """List the checkpoints of a training run with CV loss/accuracy and size.

    \b
    Marks: L = the locked epoch (voicelab.toml locked_epoch), * = chosen by the rule that
    `voicelab export` would use (or --select), E = in the exported voice. After `voicelab eval`:
    CER/WER, SIM and MOS of each epoch ("!": CER/WER beyond the base model's margin). Examples:
      voicelab checkpoints                       # llm run, default selection
      voicelab checkpoints flow --select best-cv:2
      voicelab checkpoints --lock 6              # export and say use epoch 6 from now on
    """
    from voicelab.errors import ConfigError, VoiceLabError
    from voicelab.stages.checkpoints import default_rule, evaluated, run_checkpoints, select
    from voicelab.stages.export import set_lock

    ws = ctx.workspace(write=lock is not None or unlock)  # --lock writes voicelab.toml
    if lock is not None and unlock:
        raise ConfigError("--lock and --unlock contradict each other", "pass one of them")
    if (lock is not None or unlock) and model != "llm":
        raise ConfigError("only llm epochs can be locked", "run: voicelab checkpoints llm --lock N")
    if lock is not None or unlock:
        set_lock(ws, None if unlock else lock)
        echo(f"locked epoch: {ws.config.locked_epoch}" if not unlock else "no epoch locked")
    ckpts = run_checkpoints(ws, model)
    where = str(ws.exp_dir(model))
    effective = rule or default_rule(model, ws.config.locked_epoch, evaluated(ckpts))
    problem = None
    if any(c.kind != "init" for c in ckpts):
        try:
            select(ckpts, effective, where)
        except VoiceLabError as e:
            if rule:
                raise
            problem = e.one_line()
    if as_json:
        out = {
            "model": model,
            "run_dir": where,
            "rule": effective,
            "locked_epoch": ws.config.locked_epoch,
            "checkpoints": [c.summary() for c in ckpts],
        }
        sys.stdout.write(json.dumps(out, ensure_ascii=False, indent=2) + "\n")
        return
    if not ckpts:
        echo(f"no checkpoints in {where} (run: voicelab train {model})")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model} checkpoints in {where}", title_justify="left")
    for col, justify in (
        ("", "left"),
        ("checkpoint", "left"),
        ("epoch", "right"),
        ("step", "right"),
        ("CV loss", "right"),
        ("CV acc", "right"),
        ("size", "right"),
        ("saved", "left"),
        *((c, "right") for c in EVAL_COLUMNS if any(k.eval for k in ckpts)),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for c in ckpts:
        mark = ("L" if c.locked else "") + ("*" if c.chosen else "") + ("E" if c.exported else "")
        table.add_row(
            mark,
            c.path.name,
            "-" if c.epoch is None else str(c.epoch),
            "-" if c.step is None else str(c.step),
            _fmt(c.cv_loss),
            _fmt(c.cv_acc),
            _fmt_size(c.size),
            str(c.info.get("save_time", ""))[:19],
            *(_eval_cells(c) if any(k.eval for k in ckpts) else ()),
        )
    # Piped or captured output gets 120 columns (rich would cut file names at 80).
    width = None if sys.stdout.isatty() else 120
    Console(file=sys.stdout, highlight=False, width=width).print(table)
    echo(f"rule: {effective}" + ("" if problem is None else f"  ({problem})"))


@click.command("export")
@click.option("--llm-select", metavar=RULE_METAVAR, help=f"Which llm checkpoints: {RULE_TEXT}.")
@click.option("--flow-select", metavar=RULE_METAVAR, help="Which flow checkpoints (same rules).")
@click.option("--no-flow", is_flag=True, help="Keep the base flow.pt even if flow was trained.")
@click.option("--name", metavar="NAME", help="Voice dir name under pretrained_models/.")
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing voice dir (keeps its speakers)."
)
@click.option("--check", "check", metavar="DIR", help="Only verify the model dir DIR, then exit.")
@pass_ctx
def export(
    ctx: Ctx,
    llm_select: str | None,
    flow_select: str | None,
    no_flow: bool,
    name: str | None,
    overwrite: bool,
    check: str | None,
) -> None:
    """Average the chosen checkpoints and assemble a model dir upstream's CosyVoice3 loads.

    \b
    Writes pretrained_models/Fun-CosyVoice3-0.5B-<speaker>-sft: base files hard-linked, the new
    llm.pt (and flow.pt when flow was trained), spk2info.pt for inference_sft, voicelab.json.
    Examples:
      voicelab export                              # last 3 epochs, or the locked epoch
      voicelab export --llm-select epochs:6 --overwrite
      voicelab export --check pretrained_models/Fun-CosyVoice3-0.5B-xuan-sft
    """
    from voicelab.paths import to_local_path

    if check:
        from voicelab.errors import VoiceLabError
        from voicelab.fsutil import read_json
        from voicelab.stages.export import check_dir

        target = to_local_path(check)
        base = None
        if not read_json(target / "voicelab.json", default=None):
            # No record of its base: compare with this workspace's base model, if there is one.
            try:
                ws = ctx.workspace()
                base = ws.base_model_dir if ws.base_model_dir.is_dir() else None
            except VoiceLabError:  # --check works outside a workspace too
                base = None
        rep = check_dir(target, base)
        echo(f"ok: {target} ({', '.join(rep.checked)}; speakers: {', '.join(rep.speakers)})")
        return

    from voicelab.stages.export import ExportOptions, run_export

    ws = ctx.workspace()
    res = run_export(
        ws,
        ExportOptions(
            llm_select=llm_select,
            flow_select=flow_select,
            no_flow=no_flow,
            name=name,
            overwrite=overwrite,
        ),
    )

    def _which(ckpts: list) -> str:
        labels = ", ".join(c.label for c in ckpts)
        return labels if len(ckpts) == 1 else f"average of {labels}"

    echo(f"voice dir: {res.voice_dir}")
    echo(f"  llm.pt:  {_which(res.llm)}  ({res.llm_rule})")
    echo(f"  flow.pt: {_which(res.flow) + f'  ({res.flow_rule})' if res.flow else 'base'}")
    echo(f"  speakers in spk2info.pt: {', '.join(res.speakers)}")
    echo(f"  base files: {res.linked} linked, {res.copied} copied")
    if res.removed:
        echo(f"  left out (stale): {', '.join(res.removed)}")
    where = "" if res.voice_dir == ws.voice_dir else f' --model-dir "{res.voice_dir}"'
    echo(f'  verified in {res.seconds:.1f} s. Try: voicelab say "你好"{where} --out hello.wav')


commands = [checkpoints, export]
