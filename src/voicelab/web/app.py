"""The ``voicelab ui`` web app: a JSON API over the same library functions as the CLI, and the
static page in ``web/static`` (no CDN, no web fonts: it works offline).

Every request names its workspace (``ws``, any path form the CLI accepts; empty: the server's
default). A user error answers HTTP 400 with the CLI's exact line (``error: message (hint)``).
Long work (prepare, review edits, train, export, audition, say) starts a background job
(:mod:`voicelab.web.jobs`) and answers at once; the page polls ``/api/job``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from voicelab import __version__
from voicelab.errors import ConfigError, InputError, VoiceLabError
from voicelab.web import review
from voicelab.web.jobs import Job, JobManager, error_dict
from voicelab.workspace import Workspace

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
#: Workspace folders the page may fetch audio from.
SERVED_DIRS = ("reports", "out_wav")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# ---- request bodies ------------------------------------------------------------------------------
class WsBody(BaseModel):
    ws: str = ""


class InitBody(WsBody):
    speaker: str = ""
    wav_dir: str | None = None


class PrepareBody(WsBody):
    wav_dir: str | None = None
    asr: str | None = None
    whisper_model: str | None = None
    device: str | None = None
    language: str | None = None
    transcripts: str | None = None
    limit: int | None = None


class EditBody(WsBody):
    id: str
    text: str | None = None
    keep: bool | None = None


class TrainBody(WsBody):
    model: str = "llm"
    device: str = "auto"
    epochs: int | None = None
    resume: bool = False
    new: bool = False
    dry_run: bool = False


class ExportBody(WsBody):
    llm_select: str | None = None
    flow_select: str | None = None
    overwrite: bool = True


class LockBody(WsBody):
    epoch: int | None = None


class AuditionBody(WsBody):
    compare: bool = False
    compare_ckpts: str | None = None
    blind: bool = False
    sentences: str | None = None
    seed: int = 0


class VoteBody(WsBody):
    report: str
    sentence: str
    letter: str


class SayBody(WsBody):
    text: str = ""
    preset: str | None = None
    speed: float = 1.0
    seed: int | None = None
    speaker: str | None = None
    epoch: int | None = None


def _blank(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


# ---- the app -------------------------------------------------------------------------------------
class Api:
    """What every route shares: the default workspace and the background jobs."""

    def __init__(self, default_workspace: str | None) -> None:
        self.default_workspace = default_workspace
        self.jobs = JobManager()

    def open_ws(self, ws: str, must_exist: bool = True) -> Workspace:
        return Workspace.open(_blank(ws) or self.default_workspace, must_exist=must_exist)

    @staticmethod
    def key(ws: Workspace) -> Path:
        return ws.root.resolve()

    @staticmethod
    def job_json(job: Job) -> dict[str, Any]:
        return {"job": job.snapshot()}


def create_app(default_workspace: str | None = None, host: str = "127.0.0.1") -> FastAPI:
    app = FastAPI(title="VoiceLab", version=__version__, docs_url=None, redoc_url=None)
    if host in LOOPBACK:
        # Bound to this machine only: refuse other Host names (DNS rebinding from a web page).
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK))
    api = Api(default_workspace)
    app.state.jobs = api.jobs

    @app.exception_handler(VoiceLabError)
    async def user_error(_: Request, e: VoiceLabError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": error_dict(e)})

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        err = ConfigError(f"bad value for {field}: {first.get('msg', 'invalid')}", "fix the field")
        return JSONResponse(status_code=400, content={"error": error_dict(err)})

    # ---- page ----------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        root = Workspace.open(api.default_workspace, must_exist=False).root
        return {"version": __version__, "default_workspace": str(root)}

    for routes in (_voice_routes, _job_routes, _data_routes, _train_routes, _listen_routes,
                   _speak_routes):  # fmt: skip
        app.include_router(routes(api))
    return app


def _voice_routes(api: Api) -> APIRouter:
    """The workspace: open, create, check (doctor)."""
    r = APIRouter()

    @r.get("/api/workspace")
    def workspace(ws: str = "") -> dict[str, Any]:
        w = api.open_ws(ws, must_exist=False)
        exists = w.config_file.is_file()
        out: dict[str, Any] = {"root": str(w.root), "exists": exists}
        if exists:
            from voicelab.stages.synth import epochs_on_disk

            out.update(
                speaker=w.config.speaker,
                wav_dir=w.config.wav_dir,
                locked_epoch=w.config.locked_epoch,
                prepared=(w.prepare_dir / "segments.jsonl").is_file(),
                voice_dir=str(w.voice_dir),
                voice_exported=(w.voice_dir / "llm.pt").is_file(),
                epochs=epochs_on_disk(w) if w.config.speaker else [],
                prepare_options=w.config.section("prepare"),
            )
        job = api.jobs.get(api.key(w))
        out["job"] = job.snapshot() if job else None
        return out

    @r.post("/api/workspace")
    def init(body: InitBody) -> dict[str, Any]:
        # As `voicelab init`: a bad speaker id fails with the same line.
        w = Workspace.init(_blank(body.ws) or api.default_workspace, body.speaker.strip(),
                           _blank(body.wav_dir))  # fmt: skip
        return {"root": str(w.root), "speaker": w.config.speaker, "wav_dir": w.config.wav_dir}

    @r.get("/api/doctor")
    def doctor(ws: str = "") -> dict[str, Any]:
        from voicelab.doctor import run_checks

        checks = run_checks(api.open_ws(ws, must_exist=False))
        return {"checks": [c.to_dict() for c in checks]}

    return r


def _job_routes(api: Api) -> APIRouter:
    """The running job of a workspace: its state, and stopping it."""
    r = APIRouter()

    @r.get("/api/job")
    def job(ws: str = "") -> dict[str, Any]:
        j = api.jobs.get(api.key(api.open_ws(ws, must_exist=False)))
        return {"job": j.snapshot() if j else None}

    @r.post("/api/job/stop")
    def stop(body: WsBody) -> dict[str, Any]:
        return api.job_json(api.jobs.stop(api.key(api.open_ws(body.ws))))

    return r


def _data_routes(api: Api) -> APIRouter:
    """Prepare and the transcript review."""
    r = APIRouter()

    @r.post("/api/prepare")
    def prepare(body: PrepareBody) -> dict[str, Any]:
        from voicelab.paths import to_local_path
        from voicelab.stages.prepare import options_from_workspace, run_prepare

        w = api.open_ws(body.ws)
        wav_dir = _blank(body.wav_dir)
        transcripts = _blank(body.transcripts)
        # As `voicelab prepare`: given options are saved in voicelab.toml and reused.
        given = {
            "asr": _blank(body.asr),
            "whisper_model": _blank(body.whisper_model),
            "device": _blank(body.device),
            "language": _blank(body.language),
            "transcripts": str(to_local_path(transcripts)) if transcripts else None,
        }

        def work(_: Job) -> dict[str, Any]:
            if wav_dir:
                w.config.wav_dir = str(to_local_path(wav_dir))
                w.save()
            for k, v in given.items():
                if v is not None:
                    w.set_option("prepare", k, v)
            opts = options_from_workspace(w, **given, limit=body.limit)
            res = run_prepare(w, opts)
            # Edits not applied yet stay, but only for segments that still exist.
            if review.prune(w):
                log.warning("review edits of segments that are gone were dropped")
            return {"summary": res.summary_lines(), "figures": res.figures()}

        return api.job_json(api.jobs.start(api.key(w), "prepare", work))

    @r.get("/api/segments")
    def segments(ws: str = "") -> dict[str, Any]:
        w = api.open_ws(ws)
        return {"segments": review.segment_rows(w)}

    @r.get("/api/clip")
    def clip(utt: str, ws: str = "") -> FileResponse:
        return FileResponse(review.clip_path(api.open_ws(ws), utt), media_type="audio/wav")

    @r.post("/api/review/edit")
    def edit(body: EditBody) -> dict[str, Any]:
        w = api.open_ws(body.ws)
        return {"pending": review.edit(w, body.id, body.text, body.keep)}

    @r.post("/api/review/discard")
    def discard(body: WsBody) -> dict[str, Any]:
        review.discard(api.open_ws(body.ws))
        return {"ok": True}

    @r.post("/api/review/apply")
    def apply(body: WsBody) -> dict[str, Any]:
        from voicelab.stages.prepare import options_from_workspace, run_prepare

        w = api.open_ws(body.ws)
        path = review.pending_path(w)
        if not path.is_file():
            raise InputError("no edits to apply", "edit a transcript or keep/exclude a clip first")

        def work(_: Job) -> dict[str, Any]:
            # `voicelab prepare --apply-review prepare/review.pending.tsv`: no ASR is redone.
            res = run_prepare(w, options_from_workspace(w, apply_review=path))
            review.discard(w)
            return {"summary": res.summary_lines(), "figures": res.figures()}

        return api.job_json(api.jobs.start(api.key(w), "review", work))

    return r


def _train_routes(api: Api) -> APIRouter:
    """Training and its live view."""
    r = APIRouter()

    @r.post("/api/train")
    def train(body: TrainBody) -> dict[str, Any]:
        from voicelab.stages.train import (
            TrainOptions,
            resolve_trainer,
            result_dict,
            run_name,
            run_train,
            stop_training,
        )

        w = api.open_ws(body.ws)
        if body.model not in ("llm", "flow"):
            raise ConfigError(f"unknown model {body.model!r}", "use llm or flow")
        opts = TrainOptions(device=body.device, epochs=body.epochs, resume=body.resume,
                            new=body.new, dry_run=body.dry_run)  # fmt: skip
        # The run dir the trainer will use (VoiceLab's engine: .../voicelab), for the stop button.
        trainer = resolve_trainer(opts, w.config.section("train"))
        run_dir = w.exp_dir(body.model, run_name(trainer, opts.engine))

        def work(_: Job) -> dict[str, Any]:
            res = run_train(w, body.model, opts)
            # The lines `voicelab train` prints.
            if opts.dry_run:
                lines = [f"checked; config and launch.sh previewed in {res.run_dir} (nothing "
                         "launched)"]  # fmt: skip
            else:
                lines = res.summary_lines()
            return {**result_dict(res), "summary": lines}

        def on_stop() -> None:
            # Preflight may still be running: wait (a little) for the launch, then stop it.
            for _ in range(240):
                if stop_training(run_dir) or current.state != "running":
                    return
                time.sleep(0.5)

        kind = f"{'check' if body.dry_run else 'train'}-{body.model}"
        current = api.jobs.start(api.key(w), kind, work, on_stop=on_stop)
        return api.job_json(current)

    @r.get("/api/train/view")
    def train_view(ws: str = "", model: str = "llm") -> dict[str, Any]:
        from voicelab.web.training import run_view

        if model not in ("llm", "flow"):
            raise ConfigError(f"unknown model {model!r}", "use llm or flow")
        return run_view(api.open_ws(ws), model)

    return r


def _listen_routes(api: Api) -> APIRouter:
    """Checkpoints, lock, export, auditions and votes, audio files."""
    r = APIRouter()

    @r.get("/api/checkpoints")
    def checkpoints(ws: str = "", model: str = "llm") -> dict[str, Any]:
        from voicelab.stages.checkpoints import default_rule, list_checkpoints

        w = api.open_ws(ws)
        if model not in ("llm", "flow"):
            raise ConfigError(f"unknown model {model!r}", "use llm or flow")
        return {
            "model": model,
            "checkpoints": list_checkpoints(w, model),
            "rule": default_rule(model, w.config.locked_epoch),
            "locked_epoch": w.config.locked_epoch,
        }

    @r.post("/api/lock")
    def lock(body: LockBody) -> dict[str, Any]:
        from voicelab.stages.export import set_lock

        w = api.open_ws(body.ws)
        set_lock(w, body.epoch)
        return {"locked_epoch": w.config.locked_epoch}

    @r.post("/api/export")
    def export(body: ExportBody) -> dict[str, Any]:
        from voicelab.stages.export import ExportOptions, run_export

        w = api.open_ws(body.ws)
        opts = ExportOptions(
            llm_select=_blank(body.llm_select),
            flow_select=_blank(body.flow_select),
            overwrite=body.overwrite,
        )

        def work(_: Job) -> dict[str, Any]:
            res = run_export(w, opts)
            return {
                "voice_dir": str(res.voice_dir),
                "llm": [c.label for c in res.llm],
                "llm_rule": res.llm_rule,
                "flow": [c.label for c in res.flow],
                "speakers": res.speakers,
            }

        return api.job_json(api.jobs.start(api.key(w), "export", work))

    @r.post("/api/audition")
    def audition(body: AuditionBody) -> dict[str, Any]:
        from voicelab.fsutil import atomic_write_text
        from voicelab.stages.audition import AuditionOptions, run_audition

        w = api.open_ws(body.ws)
        sentences = None
        if _blank(body.sentences):
            sentences = atomic_write_text(w.reports_dir / ".ui-sentences.txt", body.sentences)
        opts = AuditionOptions(sentences=sentences, compare=body.compare,
                               compare_ckpts=_blank(body.compare_ckpts), blind=body.blind,
                               seed=body.seed)  # fmt: skip

        def work(_: Job) -> dict[str, Any]:
            from voicelab.runner.pipeline import voice_hint

            with voice_hint(w):
                res = run_audition(w, opts)
            from voicelab.runner.report import refresh_after_audition

            refresh_after_audition(w, res.report_dir)
            return {"report": res.report_dir.name, "takes": res.takes, "variants": res.variants}

        return api.job_json(api.jobs.start(api.key(w), "audition", work))

    @r.get("/api/auditions")
    def auditions(ws: str = "") -> dict[str, Any]:
        from voicelab.web.listening import list_auditions

        return {"auditions": list_auditions(api.open_ws(ws))}

    @r.post("/api/vote")
    def vote(body: VoteBody) -> dict[str, Any]:
        from voicelab.web.listening import save_vote

        return save_vote(api.open_ws(body.ws), body.report, body.sentence, body.letter)

    @r.get("/api/file")
    def file(path: str, ws: str = "") -> FileResponse:
        w = api.open_ws(ws)
        root = w.root.resolve()
        target = (root / path).resolve()
        allowed = any(target.is_relative_to(root / d) for d in SERVED_DIRS)
        if not allowed or target.suffix.lower() != ".wav" or not target.is_file():
            raise InputError(f"no audio file {path}", "speak or audition again")
        return FileResponse(target, media_type="audio/wav")

    return r


def _speak_routes(api: Api) -> APIRouter:
    """Speaking text with the voice."""
    r = APIRouter()

    @r.post("/api/say")
    def say(body: SayBody) -> dict[str, Any]:
        from voicelab.blocks.tts_text import read_texts
        from voicelab.stages.synth import SayOptions, check_options, describe, run_say

        w = api.open_ws(body.ws)
        texts = read_texts(body.text, None, False)  # the CLI's own reading and messages
        out = w.root / "out_wav" / f"ui-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 1000}"
        opts = SayOptions(out=out, speaker=_blank(body.speaker), epoch=body.epoch,
                          preset=_blank(body.preset), speed=body.speed, seed=body.seed,
                          join=len(texts) > 1)  # fmt: skip
        check_options(opts)

        def work(_: Job) -> dict[str, Any]:
            from voicelab.runner.pipeline import voice_hint

            with voice_hint(w):
                res = run_say(w, texts, opts)
            files = [*res.files, *([res.joined] if res.joined else [])]
            root = w.root.resolve()
            return {
                "files": [str(Path(f).resolve().relative_to(root)) for f in files],
                "durations": [*res.durations, *([res.joined_seconds] if res.joined else [])],
                "summary": describe(res),
            }

        return api.job_json(api.jobs.start(api.key(w), "say", work))

    return r
