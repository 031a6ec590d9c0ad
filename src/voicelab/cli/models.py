"""``voicelab download cosyvoice3|whisper|funasr`` and ``voicelab models``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from voicelab.cli.main import Ctx, pass_ctx
from voicelab.console import echo, status
from voicelab.paths import to_local_path

_SOURCE = click.Choice(["modelscope", "huggingface"], case_sensitive=False)


@click.group()
def download() -> None:
    """Download pretrained models (resumable, verified, mirror-aware).

    \b
    The source and endpoint come from the options, else the user config's [download] section
    (saved with --save), else ModelScope. Hugging Face honours HF_ENDPOINT, HF_HOME and
    HF_HUB_CACHE; ModelScope honours MODELSCOPE_ENDPOINT and MODELSCOPE_CACHE.
    In mainland China: --source modelscope, or --source huggingface --endpoint https://hf-mirror.com
    """


@download.command("cosyvoice3")
@click.option(
    "--source", type=_SOURCE, help="Hub to download from (default: saved, else modelscope)."
)
@click.option(
    "--endpoint", metavar="URL", help="Hub endpoint or mirror, e.g. https://hf-mirror.com."
)
@click.option("--revision", metavar="REV", help="Branch, tag or commit of the model repository.")
@click.option(
    "--rl/--no-rl",
    default=None,
    help="Use the RL-tuned LLM as llm.pt (fetches llm.rl.pt) / go back to the base LLM.",
)
@click.option(
    "--ttsfrd", is_flag=True, help="Also fetch the optional ttsfrd text-normalization resource."
)
@click.option(
    "--link-vendor",
    metavar="DIR",
    help="With --ttsfrd: link the resource into DIR/pretrained_models (the upstream checkout).",
)
@click.option("--all-files", is_flag=True, help="Every file of the repository (TensorRT ONNX too).")
@click.option("--dest", metavar="DIR", help="Model dir (default: the workspace's base model dir).")
@click.option(
    "--from-dir",
    metavar="DIR",
    help="Copy from a folder (another machine's model dir, a USB copy) instead of a hub.",
)
@click.option(
    "--check", is_flag=True, help="Only verify what is there (sizes and hashes); no network."
)
@click.option("--save", is_flag=True, help="Remember --source/--endpoint for every later download.")
@pass_ctx
def cosyvoice3(
    ctx: Ctx,
    source: str | None,
    endpoint: str | None,
    revision: str | None,
    rl: bool | None,
    ttsfrd: bool,
    link_vendor: str | None,
    all_files: bool,
    dest: str | None,
    from_dir: str | None,
    check: bool,
    save: bool,
) -> None:
    """Fun-CosyVoice3-0.5B (FunAudioLLM/Fun-CosyVoice3-0.5B-2512) into pretrained_models.

    \b
    A complete dir downloads nothing; a partial or corrupt one re-fetches only the bad files.
    examples:
      voicelab download cosyvoice3 --source modelscope --save
      voicelab download cosyvoice3 --source huggingface --endpoint https://hf-mirror.com
      voicelab download cosyvoice3 --rl          # llm.pt = the RL-tuned LLM (--no-rl undoes)
      voicelab download cosyvoice3 --check       # verify hashes offline
      voicelab download cosyvoice3 --from-dir /mnt/d/Fun-CosyVoice3-0.5B   # offline machine
    """
    from voicelab import models as dl

    ws = ctx.workspace(must_exist=False)
    model_dir = to_local_path(dest) if dest else ws.base_model_dir
    if save:
        path = dl.save_download_settings(source, endpoint)
        echo(f"saved download settings in {path}")
    if check:
        with status(f"hashing {model_dir}"):
            report = dl.verify_model_dir(model_dir, deep=True)
        echo(f"{model_dir}: {report.summary} ({report.manifest})")
        if not report.ok:
            sys.exit(1)
        return
    fetcher = dl.LocalFetcher(to_local_path(from_dir), model_dir) if from_dir else None
    result = dl.download_cosyvoice3(
        model_dir,
        fetcher=fetcher,
        source=source,
        endpoint=endpoint,
        revision=revision,
        rl=rl,
        ttsfrd=ttsfrd,
        all_files=all_files,
        vendor_dir=to_local_path(link_vendor) if link_vendor else None,
    )
    for line in result.lines():
        echo(line)


@download.command("whisper")
@click.option(
    "--model", default="large-v3", show_default=True, help="faster-whisper size or repo id."
)
@click.option("--endpoint", metavar="URL", help="Hugging Face endpoint or mirror (HF_ENDPOINT).")
@click.option("--cache-dir", metavar="DIR", help="HF cache (default: HF_HUB_CACHE / HF_HOME/hub).")
@click.option("--deep", is_flag=True, help="Also check the cached files' hashes.")
@click.option(
    "--save", is_flag=True, help="Remember --endpoint for every later Hugging Face download."
)
def whisper(
    model: str, endpoint: str | None, cache_dir: str | None, deep: bool, save: bool
) -> None:
    """A faster-whisper model into the Hugging Face cache, so 'prepare' runs offline later.

    \b
    A broken cache ("Cannot load the target vocabulary") is detected and only the broken files
    are fetched again.
    """
    from voicelab import models as dl

    if save and endpoint:
        echo(f"saved download settings in {dl.save_download_settings('huggingface', endpoint)}")
    path = dl.download_whisper(
        model,
        endpoint=endpoint,
        cache_dir=to_local_path(cache_dir) if cache_dir else None,
        deep=deep,
    )
    echo(f"{dl.whisper_repo(model)}: ready at {path}")


@download.command("funasr")
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME",
    help="FunASR name (paraformer-zh, fsmn-vad, ct-punc, sensevoice) or ModelScope id; "
    "repeatable (default: paraformer-zh fsmn-vad ct-punc).",
)
@click.option("--endpoint", metavar="URL", help="ModelScope endpoint (MODELSCOPE_ENDPOINT).")
@click.option("--revision", default="master", show_default=True, help="Model revision.")
@click.option("--cache-dir", metavar="DIR", help="ModelScope cache (default: MODELSCOPE_CACHE).")
def funasr(
    models: tuple[str, ...], endpoint: str | None, revision: str, cache_dir: str | None
) -> None:
    """FunASR models into the ModelScope cache (MODELSCOPE_CACHE), where funasr finds them."""
    from voicelab import models as dl

    cache = to_local_path(cache_dir) if cache_dir else None
    for name in models or dl.FUNASR_DEFAULT:
        path = dl.download_funasr(name, endpoint=endpoint, revision=revision, cache_dir=cache)
        echo(f"{name}: ready at {path}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--no-caches", is_flag=True, help="Only the workspace's pretrained_models.")
@pass_ctx
def models(ctx: Ctx, as_json: bool, no_caches: bool) -> None:
    """What models are present: base model, voices (and their base), ttsfrd, ASR caches."""
    from voicelab import models as dl

    ws = ctx.workspace(must_exist=False)
    infos = dl.list_models(ws, caches=not no_caches)
    pretrained = [i.path for i in infos if i.where == "pretrained"]
    disk = dl.disk_usage(pretrained)
    if as_json:
        payload = {
            "pretrained_dir": str(ws.pretrained_dir),
            "pretrained_disk_bytes": disk,
            "models": [i.to_dict() for i in infos],
        }
        echo(json.dumps(payload, ensure_ascii=False, indent=2))
        return
    if not infos:
        echo(f"no models under {ws.pretrained_dir}; get one with: voicelab download cosyvoice3")
        return
    for i in infos:
        state = {True: "complete", False: "INCOMPLETE", None: "-"}[i.complete]
        size = dl.human_bytes(i.size_bytes)
        if i.shared_bytes:
            size += f" ({dl.human_bytes(i.shared_bytes)} shared with {i.base})"
        extra = f" <- {i.base}" if i.kind == "voice" and i.base else ""
        where = "" if i.where == "pretrained" else f" [{i.where}]"
        echo(f"{i.kind:8} {i.name}{extra}{where}: {state}, {size}")
        if i.detail and i.complete is not True:
            echo(f"         {i.detail}")
        echo(f"         {_short(i.path)}")
    if pretrained:
        echo(f"pretrained_models on disk: {dl.human_bytes(disk)} (hard-linked files counted once)")


def _short(path: Path) -> str:
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


commands = [download, models]
