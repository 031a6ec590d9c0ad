"""``voicelab audition``: fixed test sentences in one or more variants, on a static HTML page.

A variant is an instruct (preset or prompt text), a speed and a set of weights (the voice, an
epoch, a checkpoint). ``--compare`` is the notes' 2 x 2 grid (neutral/hype x speed 1.0/1.1);
``--compare-ckpts epoch_4,epoch_6,avg`` puts checkpoints side by side (``avg``: the exported
voice). Every sentence is spoken in every variant with the same seed, so what differs is the
variant.

The report is ``reports/audition-<time>/index.html`` plus ``audio/*.wav``: no network, no
external JS/CSS, playable from disk. ``--blind`` shuffles the takes of each sentence, labels them
A, B, C ... and keeps the key away from the pages (``.voicelab/audition-keys/<report>.key.json``
in the workspace, not under ``reports/``), so the reports can be handed to a listener. The page
stores the listener's picks in ``localStorage`` and offers them as a JSON download (and as text
to copy); ``voicelab audition --unblind choices.json`` joins them with the key.

HTML generation (:func:`render_html`) and unblinding are pure and need no torch.
"""

from __future__ import annotations

import html
import json
import logging
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from voicelab.contract import RunOptions, Stage, StageResult, resolve
from voicelab.errors import ConfigError, InputError, ModelError
from voicelab.fsutil import atomic_write_json, atomic_write_text, read_json
from voicelab.paths import safe_name, to_local_path

if TYPE_CHECKING:
    from voicelab.stages.synth import Weights
    from voicelab.workspace import Workspace

log = logging.getLogger(__name__)

# (id, text): Chinese and English, numbers, dates, polyphones, mixed, a long paragraph.
DEFAULT_SENTENCES: tuple[tuple[str, str], ...] = (
    ("zh-greeting", "你好，欢迎收听。这是用我自己的声音训练出来的模型。"),
    ("en-greeting", "Hello, this is my own voice, fine-tuned with VoiceLab."),
    ("zh-numbers", "这台电脑原价 3999 元，打八五折以后只要 3399.15 元，省了将近百分之十五。"),
    ("zh-date", "会议定在 2025年3月14日 下午 3:30，地点是 5 楼 502 会议室。"),
    ("zh-polyphone-1", "我去银行办事，出来以后沿着河边行走了一会儿。"),
    ("zh-polyphone-2", "这件事很重要，请不要重复犯同样的错误，重新检查一遍。"),
    ("mixed", "今天我们用 Python 和 CUDA 训练了一个 TTS 模型，效果 very good！"),
    (
        "en-numbers",
        "On March 14, 2025, the 3 engineers shipped version 2.5 at 9:30 in the morning.",
    ),
    (
        "zh-paragraph",
        "那天傍晚，雨刚停，街上的行人渐渐多了起来。我沿着熟悉的小路往家走，路边的梧桐叶还在滴水，"
        "空气里有泥土和青草的味道。走到巷口的时候，我忽然听见有人在叫我的名字，回头一看，"
        "原来是多年不见的老同学。我们站在路灯下聊了很久，从学生时代的趣事，一直聊到这些年各自的变化，"
        "直到夜色深了，才依依不舍地道别。",
    ),
)
GRID = (("neutral", 1.0), ("neutral", 1.1), ("hype", 1.0), ("hype", 1.1))
VOICE_TOKENS = ("avg", "voice", "exported")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class Sentence:
    id: str
    text: str


@dataclass
class Take:
    """One sentence in one variant, as the page shows it."""

    variant: str  # the real variant name (never written to a blind page)
    label: str  # what the page shows: the variant name, or a letter when blind
    wav: str  # path relative to index.html
    seconds: float = 0.0
    rtf: float = 0.0


@dataclass
class PageSentence:
    id: str
    text: str
    spoken_text: str = ""  # after normalization, as the model read it
    takes: list[Take] = field(default_factory=list)


@dataclass
class Page:
    report_id: str
    title: str
    blind: bool = False
    meta: dict[str, str] = field(default_factory=dict)
    variants: dict[str, str] = field(default_factory=dict)  # name -> description (not blind)
    sentences: list[PageSentence] = field(default_factory=list)


# ---- sentences and variants -------------------------------------------------------------------
def default_sentences() -> list[Sentence]:
    return [Sentence(i, t) for i, t in DEFAULT_SENTENCES]


def read_sentences(path: str | Path) -> list[Sentence]:
    """One sentence per line (``#`` comments and blank lines skipped); ``id<TAB>text`` names it."""
    p = to_local_path(path)
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError as e:
        raise InputError(f"sentences file {p} does not exist", "check the path") from e
    except UnicodeDecodeError as e:
        raise InputError(f"sentences file {p} is not UTF-8 text", "save it as UTF-8") from e
    out: list[Sentence] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sid, sep, text = line.partition("\t")
        if not sep:
            sid, text = f"s{n:02d}", line
        sid = safe_name(sid.strip(), 40)
        if sid in seen:
            sid = f"{sid}-{n}"
        seen.add(sid)
        out.append(Sentence(sid, text.strip()))
    if not out:
        raise InputError(f"sentences file {p} has no sentences", "write one sentence per line")
    return out


@dataclass
class Variant:
    name: str
    instruct: str
    speed: float
    weights: Weights
    description: str = ""


def ckpt_weights(ws: Workspace | None, token: str, flow: Path | None = None) -> Weights:
    """``avg``/``voice`` (the exported voice), ``epoch_N``/``N``, a file, or a name in the run."""
    from voicelab.stages.synth import Weights, epoch_checkpoint, epochs_on_disk

    tok = token.strip()
    if tok.lower() in VOICE_TOKENS:
        return Weights(llm=None, flow=flow, label=f"{tok} (exported voice)")
    m = re.fullmatch(r"(?:epoch_?|e)?(\d+)", tok, flags=re.IGNORECASE)
    path = to_local_path(tok)
    if m and ws is not None:
        cand = epoch_checkpoint(ws, int(m.group(1)))
    elif path.suffix == ".pt" or "/" in tok:
        cand = path
    elif ws is not None:
        cand = ws.exp_dir("llm") / f"{tok}.pt"
    else:
        cand = path
    if not cand.is_file():
        have = epochs_on_disk(ws) if ws is not None else []
        raise ModelError(
            f"--compare-ckpts {tok}: {cand} does not exist",
            f"use avg, a file, or one of: {', '.join(f'epoch_{e}' for e in have)}"
            if have
            else "use avg or a checkpoint file",
        )
    return Weights(llm=cand, flow=flow, label=cand.name if cand == path else tok)


def _ckpt_name(token: str) -> str:
    """A short variant name: ``epoch_4``, ``avg``, or a file's stem (not its whole path)."""
    tok = token.strip()
    if "/" in tok or "\\" in tok or tok.endswith(".pt"):
        tok = to_local_path(tok).stem
    return safe_name(tok, 40)


def build_variants(
    ws: Workspace | None,
    training_instruct: str,
    base: Weights,
    preset: str | None = None,
    prompt_text: str | None = None,
    speed: float = 1.0,
    compare: bool = False,
    compare_ckpts: str | None = None,
) -> list[Variant]:
    """The variants to speak: one by default; the 2 x 2 grid; checkpoints; or both crossed."""
    from voicelab.blocks.tts_text import resolve_instruct
    from voicelab.stages.synth import Weights

    if compare and (preset is not None or prompt_text is not None):
        raise ConfigError("--compare sets the presets itself", "drop --preset/--prompt-text")
    styles: list[tuple[str, str, float]] = []
    if compare:
        for name, spd in GRID:
            styles.append((f"{name}-{spd:.1f}", resolve_instruct(training_instruct, name), spd))
    else:
        style = "custom" if prompt_text is not None else (preset or "neutral").lower()
        styles.append(
            (
                f"{style}-{speed:.1f}",
                resolve_instruct(training_instruct, preset, prompt_text),
                speed,
            )
        )
    if compare_ckpts:
        tokens = [t for t in compare_ckpts.split(",") if t.strip()]
        if not tokens:
            raise ConfigError(
                "--compare-ckpts is empty", "e.g. --compare-ckpts epoch_4,epoch_6,avg"
            )
        weights = [(_ckpt_name(t), ckpt_weights(ws, t, base.flow)) for t in tokens]
    else:
        weights = [("", base)]
    out: list[Variant] = []
    for wname, w in weights:
        for sname, instruct, spd in styles:
            if wname and len(styles) == 1 and not compare:
                name = wname  # plain checkpoint comparison: name by checkpoint only
            else:
                name = f"{wname}_{sname}" if wname else sname
            desc = f"{w.label}; instruct {instruct!r}; speed {spd:g}"
            out.append(Variant(name, instruct, spd, Weights(w.llm, w.flow, w.label), desc))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise ConfigError("--compare-ckpts names a checkpoint twice", "list each once")
    return out


# ---- blind key and unblinding -------------------------------------------------------------------
def blind_key(
    sentence_ids: list[str], variant_names: list[str], rng: random.Random
) -> dict[str, dict[str, str]]:
    """Per sentence, the variants shuffled and labelled A, B, ...: ``{sid: {letter: name}}``."""
    if len(variant_names) > len(_LETTERS):
        raise ConfigError(f"--blind handles at most {len(_LETTERS)} variants", None)
    key: dict[str, dict[str, str]] = {}
    for sid in sentence_ids:
        order = list(variant_names)
        rng.shuffle(order)
        key[sid] = dict(zip(_LETTERS, order, strict=False))
    return key


def apply_blind_key(page: Page, key: dict[str, dict[str, str]]) -> None:
    """Relabel every take by its letter, order takes by letter, drop the variant table."""
    for s in page.sentences:
        letter_of = {name: letter for letter, name in key[s.id].items()}
        for t in s.takes:
            t.label = letter_of[t.variant]
        s.takes.sort(key=lambda t: t.label)
    page.blind = True
    page.variants = {}


def keys_dir(reports_dir: Path) -> Path:
    """Where blind keys go: not in the report folder, nor in ``reports/`` beside it (whoever is
    sent the reports, or opens reports/index.html, must not find the answers one click away);
    in a workspace that is ``.voicelab/audition-keys``."""
    return reports_dir.parent / ".voicelab" / "audition-keys"


def key_path(reports_dir: Path, report_id: str) -> Path:
    return keys_dir(reports_dir) / f"{report_id}.key.json"


@dataclass
class Unblinded:
    report_id: str
    rows: list[tuple[str, str, str]]  # sentence id, letter, variant
    tally: dict[str, int]
    unanswered: list[str]


def unblind(choices: dict[str, Any], key: dict[str, Any]) -> Unblinded:
    """Join a listener's choices (``{"report", "choices": {sentence: letter}}``) with the key."""
    rid = str(choices.get("report", ""))
    if key.get("report") and rid and key["report"] != rid:
        raise InputError(
            f"the choices are for {rid}, the key is for {key['report']}", "pass the matching --key"
        )
    picks = choices.get("choices")
    table = key.get("sentences", {})
    if not isinstance(picks, dict):
        raise InputError(
            "the choices file has no 'choices' object", "download it again from the page"
        )
    rows: list[tuple[str, str, str]] = []
    tally: Counter[str] = Counter({v: 0 for letters in table.values() for v in letters.values()})
    for sid, letters in table.items():
        letter = picks.get(sid)
        if letter is None:
            continue
        variant = letters.get(str(letter))
        if variant is None:
            raise InputError(
                f"sentence {sid}: no take {letter!r} in the key", "is this the right key?"
            )
        rows.append((sid, str(letter), variant))
        tally[variant] += 1
    unanswered = [sid for sid in table if sid not in picks]
    return Unblinded(rid or str(key.get("report", "")), rows, dict(tally.most_common()), unanswered)


def find_key(choices_file: Path, report_id: str, reports_dirs: list[Path]) -> Path:
    name = f"{report_id}.key.json"
    here = choices_file.resolve().parent
    # The keys folder first; then where VoiceLab wrote keys before (beside the report folders).
    places = [keys_dir(d) for d in reports_dirs] + [*reports_dirs, here, here / "reports"]
    places = list(dict.fromkeys([*places, here.parent]))
    for d in places:
        if (d / name).is_file():
            return d / name
    raise InputError(
        f"no key file {name} found (looked in {', '.join(str(d) for d in places)})",
        "pass --key PATH (voicelab audition --blind printed where it wrote it)",
    )


def run_unblind(
    choices_file: str | Path, key_file: str | Path | None, reports_dirs: list[Path]
) -> Unblinded:
    cpath = to_local_path(choices_file)
    try:
        choices = json.loads(cpath.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"choices file {cpath} does not exist", "check the path") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{cpath} is not JSON: {e}", "download the choices again") from e
    if not isinstance(choices, dict):
        raise InputError(f"{cpath} is not a choices file", "download the choices again")
    rid = str(choices.get("report", ""))
    kpath = to_local_path(key_file) if key_file else find_key(cpath, rid, reports_dirs)
    key = read_json(kpath)
    if not isinstance(key, dict):
        raise InputError(f"key file {kpath} is missing or not JSON", "pass --key PATH")
    return unblind(choices, key)


def describe_unblind(res: Unblinded) -> list[str]:
    lines = [f"{res.report_id}: {len(res.rows)} choice(s)"]
    width = max((len(r[0]) for r in res.rows), default=0)
    lines += [f"  {sid:<{width}}  {letter} = {variant}" for sid, letter, variant in res.rows]
    total = len(res.rows) or 1
    lines.append("preferred:")
    lines += [
        f"  {v}: {n} of {len(res.rows)} ({100 * n / total:.0f}%)" for v, n in res.tally.items()
    ]
    if res.unanswered:
        lines.append(f"no choice for: {', '.join(res.unanswered)}")
    return lines


# ---- HTML ---------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","PingFang SC","Microsoft YaHei",sans-serif;
margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222;background:#fafafa}
h1{font-size:1.5rem}h2{font-size:1.05rem;margin:0 0 .3rem}
.meta{color:#555;font-size:.9rem}.meta td{padding:0 .8rem 0 0}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1rem;margin:1rem 0}
.text{font-size:1.1rem;margin:.2rem 0}.spoken{color:#777;font-size:.85rem;margin:.2rem 0 .6rem}
table.takes{border-collapse:collapse;width:100%}
table.takes td,table.takes th{padding:.25rem .5rem;text-align:left;border-top:1px solid #eee}
audio{width:22rem;max-width:100%;height:2rem}.num{font-variant-numeric:tabular-nums;color:#444}
#choices{position:sticky;bottom:0;background:#fffbe6;border:1px solid #e6d27a;padding:.8rem;
border-radius:6px}#choices textarea{width:100%;height:5rem;font-family:monospace;font-size:.8rem}
"""

_BLIND_JS = """
(function () {
  var report = document.body.getAttribute('data-report');
  var storeKey = 'voicelab-audition:' + report;
  var choices = {};
  try { choices = JSON.parse(window.localStorage.getItem(storeKey) || '{}') || {}; }
  catch (e) { choices = {}; }
  function payload() {
    return JSON.stringify({report: report, choices: choices}, null, 2);
  }
  function show() {
    document.getElementById('choices-json').value = payload();
    document.getElementById('choices-count').textContent = Object.keys(choices).length;
  }
  function save() {
    try { window.localStorage.setItem(storeKey, JSON.stringify(choices)); } catch (e) {}
    show();
  }
  var radios = document.querySelectorAll('input[type=radio][data-sentence]');
  for (var i = 0; i < radios.length; i++) {
    (function (r) {
      if (choices[r.getAttribute('data-sentence')] === r.value) { r.checked = true; }
      r.addEventListener('change', function () {
        choices[r.getAttribute('data-sentence')] = r.value; save();
      });
    })(radios[i]);
  }
  document.getElementById('choices-download').addEventListener('click', function () {
    var a = document.createElement('a');
    a.href = 'data:application/json;charset=utf-8,' + encodeURIComponent(payload());
    a.download = report + '-choices.json';
    document.body.appendChild(a); a.click(); document.body.removeChild(a);
  });
  document.getElementById('choices-clear').addEventListener('click', function () {
    choices = {};
    for (var j = 0; j < radios.length; j++) { radios[j].checked = false; }
    save();
  });
  show();
})();
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def render_html(page: Page) -> str:
    """The static report page (pure): audio players per sentence and take, texts, durations and
    RTF; in blind mode letters instead of variant names and a choice per sentence."""
    out = [
        "<!doctype html>",
        '<html lang="zh"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(page.title)}</title><style>{_CSS}</style></head>",
        f'<body data-report="{_e(page.report_id)}">',
        f"<h1>{_e(page.title)}</h1>",
        '<table class="meta">',
    ]
    for k, v in page.meta.items():
        out.append(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>")
    out.append("</table>")
    if page.blind:
        out.append(
            "<p>Blind test: the takes of each sentence are shuffled and labelled by letter. "
            "Pick the best take of each sentence; the picks stay in this browser. When done, "
            "download them (or copy the text at the bottom) and run "
            "<code>voicelab audition --unblind FILE</code>.</p>"
        )
    elif page.variants:
        out.append('<table class="meta"><tr><td colspan="2"><b>variants</b></td></tr>')
        for name, desc in page.variants.items():
            out.append(f"<tr><td>{_e(name)}</td><td>{_e(desc)}</td></tr>")
        out.append("</table>")
    for n, s in enumerate(page.sentences, 1):
        out.append(f'<section id="s-{_e(s.id)}"><h2>{n}. {_e(s.id)}</h2>')
        out.append(f'<p class="text">{_e(s.text)}</p>')
        if s.spoken_text and s.spoken_text != s.text:
            out.append(f'<p class="spoken">read as: {_e(s.spoken_text)}</p>')
        head = "<th>take</th><th>audio</th><th>duration</th>"
        head += "<th>best</th>" if page.blind else "<th>RTF</th>"
        out.append(f'<table class="takes"><tr>{head}</tr>')
        for t in s.takes:
            cells = [
                f"<td>{_e(t.label)}</td>",
                f'<td><audio controls preload="none" src="{_e(quote(t.wav, safe="/"))}">'
                "</audio></td>",
                f'<td class="num">{t.seconds:.2f} s</td>',
            ]
            if page.blind:
                cells.append(
                    f'<td><input type="radio" name="pick-{_e(s.id)}" value="{_e(t.label)}" '
                    f'data-sentence="{_e(s.id)}" aria-label="best: {_e(t.label)}"></td>'
                )
            else:
                cells.append(f'<td class="num">{t.rtf:.2f}</td>')
            out.append(f"<tr>{''.join(cells)}</tr>")
        out.append("</table></section>")
    if page.blind:
        out += [
            '<div id="choices"><b><span id="choices-count">0</span> of '
            f"{len(page.sentences)} picked.</b> "
            '<button type="button" id="choices-download">Download choices</button> '
            '<button type="button" id="choices-clear">Clear</button>',
            '<textarea id="choices-json" readonly></textarea></div>',
            f"<script>{_BLIND_JS}</script>",
        ]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_page(report_dir: Path, page: Page) -> Path:
    return atomic_write_text(report_dir / "index.html", render_html(page))


# ---- synthesis ----------------------------------------------------------------------------------
@dataclass
class AuditionOptions:
    sentences: str | Path | None = None
    compare: bool = False
    compare_ckpts: str | None = None
    blind: bool = False
    model_dir: str | Path | None = None
    speaker: str | None = None
    llm_ckpt: str | Path | None = None
    flow_ckpt: str | Path | None = None
    epoch: int | None = None
    preset: str | None = None
    prompt_text: str | None = None
    speed: float = 1.0
    fp16: bool = False
    seed: int | None = 0
    text_frontend: bool = True
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


# ---- the stage contract (voicelab.contract) --------------------------------------------------

Options = AuditionOptions


def stage_options(ws: Workspace, run_opts: RunOptions) -> AuditionOptions:
    return resolve(ws, AuditionOptions, "audition", run_opts, model_dir=ws.voice_dir)


def stage_params(ws: Workspace, opts: AuditionOptions) -> dict[str, Any]:
    return {"sentences": opts.sentences, "compare": bool(opts.compare)}


def stage_outputs(ws: Workspace, opts: AuditionOptions) -> list[Path]:
    from voicelab.state import load_record

    rec = load_record(ws, "audition")
    index = rec.figures.get("index") if rec else None
    return [Path(index)] if index else []


def run(ws: Workspace, opts: AuditionOptions) -> StageResult:
    res = run_audition(ws, opts)
    figures = {"index": str(res.index), "takes": res.takes, "rtf": round(res.rtf, 3)}
    line = f"{res.takes} takes in {res.index}"
    return StageResult([res.index], figures, line, res)


STAGE = Stage(
    "audition",
    ("export",),
    stage_params,
    run,
    stage_outputs,
    summary="test sentences",
    options=stage_options,
)
