"""``run_audition``: speak every sentence with every voice and write the page."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from voicelab.fsutil import atomic_write_json
from voicelab.paths import safe_name, to_local_path

if TYPE_CHECKING:
    from voicelab.workspace import Workspace
from voicelab.stages.audition.blind import apply_blind_key, blind_key, key_path
from voicelab.stages.audition.page import Page, PageSentence, Take, write_page
from voicelab.stages.audition.sentences import default_sentences, read_sentences
from voicelab.stages.audition.variants import build_variants
from voicelab.stages.synth.say import VoiceChoice

log = logging.getLogger(__name__)


# ---- synthesis ----------------------------------------------------------------------------------
@dataclass
class AuditionOptions(VoiceChoice):
    sentences: str | Path | None = None
    compare: bool = False
    compare_ckpts: str | None = None
    blind: bool = False
    seed: int | None = 0  # a fixed seed: every take of a page is drawn alike
    out: str | Path | None = None


@dataclass
class AuditionResult:
    report_dir: Path
    index: Path
    key: Path | None
    takes: int
    variants: list[str]
    audio_seconds: float
    wall: float

    @property
    def rtf(self) -> float:
        return self.wall / self.audio_seconds if self.audio_seconds > 0 else float("inf")


def reports_root(ws: Workspace | None) -> Path:
    return ws.reports_dir if ws is not None else Path.cwd() / "reports"


def new_report_dir(root: Path) -> tuple[str, Path]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rid, n = f"audition-{stamp}", 1
    while (root / rid).exists():
        n += 1
        rid = f"audition-{stamp}-{n}"
    return rid, root / rid


def run_audition(ws: Workspace | None, opts: AuditionOptions) -> AuditionResult:
    from voicelab.blocks.tts_text import plan_utterance
    from voicelab.console import track
    from voicelab.stages.synth import (
        SayOptions,
        check_options,
        load_synthesizer,
        resolve_model_dir,
        resolve_weights,
        voice_instruct,
        write_wav,
    )

    check_options(SayOptions(speed=opts.speed))
    sentences = read_sentences(opts.sentences) if opts.sentences else default_sentences()
    base = resolve_weights(
        ws, opts.llm_ckpt, opts.flow_ckpt, opts.epoch, resolve_model_dir(ws, opts.model_dir)
    )
    variants = build_variants(
        ws,
        voice_instruct(ws),
        base,
        opts.preset,
        opts.prompt_text,
        opts.speed,
        opts.compare,
        opts.compare_ckpts,
    )
    # Plan every text first: bad text fails before the model loads.
    plans = {
        (v.name, s.id): plan_utterance(s.text, v.instruct, opts.text_frontend)
        for v in variants
        for s in sentences
    }
    if opts.out is not None:
        report_dir = to_local_path(opts.out)
        rid = report_dir.name
        root = report_dir.parent
    else:
        root = reports_root(ws)
        rid, report_dir = new_report_dir(root)
    say = SayOptions(
        model_dir=opts.model_dir,
        speaker=opts.speaker,
        llm_ckpt=opts.llm_ckpt,
        flow_ckpt=opts.flow_ckpt,
        epoch=opts.epoch,
        fp16=opts.fp16,
    )
    synth = load_synthesizer(ws, say)
    page = Page(
        report_id=rid,
        title=f"Audition: {synth.speaker}",
        meta={
            "voice": str(synth.model_dir.resolve()),
            "speaker": synth.speaker,
            "device": synth.device + (" (fp16)" if synth.fp16 else ""),
            "seed": str(opts.seed),
            "text frontend": "on" if opts.text_frontend else "off (--no-text-frontend)",
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        variants={v.name: v.description for v in variants},
        sentences=[
            PageSentence(s.id, s.text, " / ".join(plans[(variants[0].name, s.id)].segments), [])
            for s in sentences
        ],
    )
    by_id = {s.id: s for s in page.sentences}
    key = blind_key([s.id for s in sentences], [v.name for v in variants], random.SystemRandom())
    letter_of = {(sid, name): letter for sid, row in key.items() for letter, name in row.items()}
    total_audio = total_wall = 0.0
    jobs = [(v, s) for v in variants for s in sentences]  # grouped by variant: one weight swap each
    for v, s in track(jobs, "auditioning"):
        synth.use_weights(v.weights)
        spoken = synth.speak(plans[(v.name, s.id)], speed=v.speed, seed=opts.seed)
        # Blind file names must not give the variant away: sentence + letter.
        tag = letter_of[(s.id, v.name)] if opts.blind else safe_name(v.name, 60)
        rel = f"audio/{s.id}__{tag}.wav"
        write_wav(report_dir / rel, spoken.audio, spoken.sample_rate)
        by_id[s.id].takes.append(Take(v.name, v.name, rel, spoken.seconds, spoken.rtf))
        total_audio += spoken.seconds
        total_wall += spoken.wall
    page.meta["RTF"] = f"{total_wall / total_audio:.2f}" if total_audio else "n/a"
    key_file = None
    if opts.blind:
        apply_blind_key(page, key)
        key_file = atomic_write_json(
            key_path(root, rid),
            {
                "report": rid,
                "sentences": key,
                "variants": {v.name: v.description for v in variants},
            },
        )
    index = write_page(report_dir, page)
    atomic_write_json(
        report_dir / "audition.json",
        {
            "report": rid,
            "blind": page.blind,
            "meta": page.meta,
            "sentences": [asdict(s) for s in page.sentences]
            if not page.blind
            else [{"id": s.id, "text": s.text} for s in page.sentences],
        },
    )
    return AuditionResult(
        report_dir, index, key_file, len(jobs), [v.name for v in variants], total_audio, total_wall
    )
