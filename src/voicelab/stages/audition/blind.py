"""Blind listening: shuffled labels, the key kept apart from the page, and unblinding the votes."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicelab.errors import ConfigError, InputError
from voicelab.fsutil import read_json
from voicelab.paths import to_local_path

if TYPE_CHECKING:
    pass
from voicelab.stages.audition.page import Page
from voicelab.stages.audition.sentences import LETTERS


# ---- blind key and unblinding -------------------------------------------------------------------
def blind_key(
    sentence_ids: list[str], variant_names: list[str], rng: random.Random
) -> dict[str, dict[str, str]]:
    """Per sentence, the variants shuffled and labelled A, B, ...: ``{sid: {letter: name}}``."""
    if len(variant_names) > len(LETTERS):
        raise ConfigError(f"--blind handles at most {len(LETTERS)} variants", None)
    key: dict[str, dict[str, str]] = {}
    for sid in sentence_ids:
        order = list(variant_names)
        rng.shuffle(order)
        key[sid] = dict(zip(LETTERS, order, strict=False))
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
