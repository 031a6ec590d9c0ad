"""A generated, deterministic speech corpus for tests and the demo (espeak-ng + sox + ffmpeg).

:func:`build_corpus` makes, once, under ``$VOICELAB_TEST_CACHE/corpus`` (default
``<repo>/.cache/test-fixtures/corpus``)::

    clips/clip_NN.wav          a dozen English clips of 1-12 s with known text, at varied rates
    long/long_recording.wav    ~2.5 min of sentences joined by 0.6-1.5 s pauses (known positions)
    hard/stereo.wav            two channels
    hard/narrowband_8k.wav     8 kHz (below upstream's 16 kHz floor: must be excluded)
    hard/compressed.mp3  hard/lossless.flac  hard/vorbis.ogg  hard/aac.m4a
    hard/zero_length.wav       0 bytes
    hard/corrupt.wav           random bytes under a .wav name
    hard/silence.wav           3 s of digital silence
    hard/clipped.wav           speech with +20 dB gain, hard clipped
    说话人 一/片段 01.wav      a path with spaces and Chinese characters

Everything is built in a temp folder beside the destination and renamed into place, so a killed
build never leaves a half corpus; a corpus whose manifest is missing, of another version, or whose
files are gone is rebuilt. espeak-ng with a fixed voice, speed and pitch gives the same samples on
every run; the corrupt file comes from a seeded generator.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from voicelab.errors import EnvironmentProblem

CORPUS_VERSION = 2
VOICE = "en-us"
SPEED = 150  # words per minute
PITCH = 50
MANIFEST = "corpus.json"

# Varied sentences (no digits, so text normalization leaves them alone), roughly 1 to 12 s.
CLIP_TEXTS: tuple[str, ...] = (
    "Good morning.",
    "Please close the door.",
    "The weather is lovely today.",
    "She sells fresh bread at the corner market.",
    "A quiet river runs behind the old stone house.",
    "We walked along the beach until the sun went down.",
    "My brother plays the piano every evening after dinner.",
    "The library opens early on weekdays and closes late on Fridays.",
    "Remember to water the plants before you leave for the long holiday.",
    "The small green boat drifted slowly across the calm lake while the children "
    "watched from the shore.",
    "Learning a new language takes patience, practice, and a great deal of curiosity about "
    "how other people think.",
    "When the train finally arrived, the tired travelers picked up their heavy bags and "
    "hurried toward the open doors, because the night was cold.",
)

LONG_SENTENCES: tuple[str, ...] = (
    "Once upon a time there was a little village at the edge of a forest.",
    "The people there grew apples and pears in wide green orchards.",
    "Every autumn they held a market in the square.",
    "Farmers came from the hills with baskets full of fruit.",
    "Children ran between the stalls and laughed loudly.",
    "An old baker sold warm bread that smelled of honey.",
    "One year a heavy storm arrived the night before the market.",
    "The wind bent the trees and the rain flooded the roads.",
    "In the morning the square was covered with leaves and broken branches.",
    "Nobody thought the market could open that day.",
    "But the baker lit his oven anyway and began to work.",
    "Soon the smell of fresh bread drifted through the wet streets.",
    "One by one the villagers came out of their houses.",
    "They swept the square and carried the branches away.",
    "By noon the stalls were standing again in neat rows.",
    "The farmers from the hills arrived late but smiling.",
    "It became the busiest market anyone could remember.",
    "Since then the village celebrates the storm every year.",
    "They call it the day of the baker and his brave oven.",
    "And every child learns the story before they learn to read.",
    "The forest still stands at the edge of the village.",
    "The orchards still grow apples and pears.",
    "Travelers who pass through in spring often stop to ask about the story.",
    "The villagers are happy to tell it, usually over a cup of tea.",
    "Some say the storm was the worst in a hundred years.",
    "Others say it was only a little rain and a lot of imagination.",
    "The baker's grandson now runs the bakery with his two daughters.",
    "They still get up before dawn to light the same old oven.",
    "On market day the line for bread reaches all the way to the fountain.",
    "Visitors are told to come early, or they will go home with nothing.",
    "In the evening musicians play in the square until the lanterns burn out.",
    "And the bakery, they say, has never closed a single day.",
)

HARD_TEXT = "This recording tests how unusual files are handled."
UNICODE_TEXT = "A folder name with spaces and Chinese characters must survive."


@dataclass
class CorpusClip:
    path: Path
    text: str
    duration: float
    sample_rate: int
    channels: int
    kind: str  # good | padded | long | stereo | narrowband | mp3 | flac | ogg | m4a | zero | ...


@dataclass
class Corpus:
    root: Path
    clips: list[CorpusClip]
    long_path: Path
    long_sentences: list[str]
    # (start, end) in seconds of the silence between two sentences of the long recording: the
    # inserted 0.6-1.5 s pause plus espeak-ng's own near-silent lead-out and lead-in around it.
    long_pauses: list[tuple[float, float]]
    hard: dict[str, Path] = field(default_factory=dict)

    # Kinds a correct intake keeps (decodable, >= 16 kHz, speech, not clipped).
    GOOD_KINDS = ("good", "padded", "stereo", "mp3", "flac", "ogg", "m4a", "unicode_path")

    def good_clips(self) -> list[CorpusClip]:
        """Clips that should be kept by ``prepare`` (the long recording is not among them: it is
        kept as several segments)."""
        return [c for c in self.clips if c.kind in self.GOOD_KINDS]

    def clip(self, kind: str) -> CorpusClip:
        return next(c for c in self.clips if c.kind == kind)

    def text_of(self, path: Path) -> str:
        for c in self.clips:
            if c.path == path:
                return c.text
        raise KeyError(path)


def corpus_cache_dir() -> Path:
    env = os.environ.get("VOICELAB_TEST_CACHE")
    if env:
        return Path(env) / "corpus"
    # src/voicelab/testing/corpus.py -> the repository root is three levels above the package.
    return Path(__file__).resolve().parents[3] / ".cache" / "test-fixtures" / "corpus"


def _need(program: str) -> str:
    found = shutil.which(program)
    if not found:
        raise EnvironmentProblem(
            f"{program} is not installed (needed to generate the test corpus)",
            "sudo apt-get install espeak-ng sox ffmpeg",
        )
    return found


TOOL_TIMEOUT_S = 300  # one espeak/sox/ffmpeg call on a few seconds of audio: never minutes


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise EnvironmentProblem(
            f"{Path(cmd[0]).name} failed building the test corpus: {proc.stderr.strip()[:300]}",
            "check that espeak-ng, sox and ffmpeg work",
        )


def _speak(text: str, out: Path) -> None:
    _run(
        [_need("espeak-ng"), "-v", VOICE, "-s", str(SPEED), "-p", str(PITCH), "-w", str(out), text]
    )


def _sox(*args: str | Path) -> None:
    # -D: no dither, so conversions are bit-exact across runs.
    _run([_need("sox"), "-D", "-V1", *[str(a) for a in args]])


def _info(path: Path) -> tuple[float, int, int]:
    import soundfile as sf

    try:
        i = sf.info(str(path))
        return float(i.duration), int(i.samplerate), int(i.channels)
    except Exception:
        # m4a: libsndfile cannot read it; ask ffprobe.
        out = subprocess.run(
            [
                _need("ffprobe"), "-v", "error", "-select_streams", "a:0",
                "-show_entries", "stream=sample_rate,channels:format=duration",
                "-of", "json", str(path),
            ],
            capture_output=True, text=True, check=True, timeout=TOOL_TIMEOUT_S,
        ).stdout  # fmt: skip
        data = json.loads(out)
        st = data["streams"][0]
        return float(data["format"]["duration"]), int(st["sample_rate"]), int(st["channels"])


def _build(root: Path) -> None:
    import soundfile as sf

    tmp = root / "tmp"
    tmp.mkdir()
    entries: list[dict] = []

    def add(path: Path, text: str, kind: str) -> None:
        if kind in ("zero", "corrupt"):
            dur, sr, ch = 0.0, 0, 0
        else:
            dur, sr, ch = _info(path)
        entries.append(
            {
                "path": str(path.relative_to(root)),
                "text": text,
                "duration": round(dur, 4),
                "sample_rate": sr,
                "channels": ch,
                "kind": kind,
            }
        )

    # Good clips at varied sample rates (all >= 16 kHz).
    rates = (22050, 24000, 16000, 44100, 48000, 22050)
    (root / "clips").mkdir()
    for i, text in enumerate(CLIP_TEXTS):
        raw = tmp / f"c{i}.wav"
        _speak(text, raw)
        out = root / "clips" / f"clip_{i + 1:02d}.wav"
        rate = rates[i % len(rates)]
        kind = "good"
        if i == 5:
            # Long leading/trailing silence: intake must trim it.
            _sox(raw, "-r", str(rate), out, "pad", "1.5", "1.5")
            kind = "padded"
        elif rate == 22050:
            shutil.copyfile(raw, out)
        else:
            _sox(raw, "-r", str(rate), out)
        add(out, text, kind)

    # The long recording: sentences with seeded pauses of 0.6-1.5 s between them.
    rng = np.random.default_rng(1234)
    sr_long = 22050
    waves: list[np.ndarray] = []
    for i, text in enumerate(LONG_SENTENCES):
        raw = tmp / f"l{i}.wav"
        _speak(text, raw)
        wav, sr = sf.read(str(raw), dtype="float32")
        if sr != sr_long:  # pragma: no cover - espeak-ng always writes 22050 Hz
            raise EnvironmentProblem(f"espeak-ng wrote {sr} Hz, expected {sr_long}")
        waves.append(wav)

    def edges(wav: np.ndarray) -> tuple[int, int]:
        # espeak-ng pads each sentence with its own near-silence: it belongs to the pause.
        loud = np.flatnonzero(np.abs(wav) > 1e-3)
        return (int(loud[0]), len(wav) - int(loud[-1]) - 1) if loud.size else (len(wav), 0)

    pieces: list[np.ndarray] = []
    pauses: list[tuple[float, float]] = []
    pos = int(0.3 * sr_long)
    pieces.append(np.zeros(pos, dtype=np.float32))
    for i, wav in enumerate(waves):
        pieces.append(wav)
        pos += len(wav)
        if i < len(waves) - 1:
            gap = round(float(rng.uniform(0.6, 1.5)) * sr_long)
            trail, lead = edges(wav)[1], edges(waves[i + 1])[0]
            pauses.append(((pos - trail) / sr_long, (pos + gap + lead) / sr_long))
            pieces.append(np.zeros(gap, dtype=np.float32))
            pos += gap
    pieces.append(np.zeros(int(0.3 * sr_long), dtype=np.float32))
    (root / "long").mkdir()
    long_path = root / "long" / "long_recording.wav"
    sf.write(str(long_path), np.concatenate(pieces), sr_long, subtype="PCM_16")
    add(long_path, " ".join(LONG_SENTENCES), "long")

    # Hard cases.
    hard = root / "hard"
    hard.mkdir()
    base = tmp / "hard.wav"
    _speak(HARD_TEXT, base)
    hard_files: dict[str, Path] = {}

    def hard_file(kind: str, name: str, *effects: str) -> None:
        out = hard / name
        _sox(base, out, *effects)
        hard_files[kind] = out
        add(out, HARD_TEXT, kind)

    # Stereo with slightly different channels (a real downmix, not two copies).
    out = hard / "stereo.wav"
    _sox(base, "-r", "44100", out, "remix", "1v0.9", "1v0.7")
    hard_files["stereo"] = out
    add(out, HARD_TEXT, "stereo")
    hard_file("narrowband", "narrowband_8k.wav", "rate", "8000")
    hard_file("mp3", "compressed.mp3")
    hard_file("flac", "lossless.flac")
    hard_file("ogg", "vorbis.ogg")
    out = hard / "aac.m4a"
    _run([_need("ffmpeg"), "-nostdin", "-loglevel", "error", "-y", "-i", str(base),
          "-c:a", "aac", "-b:a", "64k", "-fflags", "+bitexact", "-flags:a", "+bitexact",
          str(out)])  # fmt: skip
    hard_files["m4a"] = out
    add(out, HARD_TEXT, "m4a")
    out = hard / "zero_length.wav"
    out.write_bytes(b"")
    hard_files["zero"] = out
    add(out, "", "zero")
    out = hard / "corrupt.wav"
    out.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    hard_files["corrupt"] = out
    add(out, "", "corrupt")
    out = hard / "silence.wav"
    sf.write(str(out), np.zeros(3 * 24000, dtype=np.int16), 24000, subtype="PCM_16")
    hard_files["silence"] = out
    add(out, "", "silence")
    hard_file("clipped", "clipped.wav", "gain", "20")

    uni_dir = root / "说话人 一"
    uni_dir.mkdir()
    raw = tmp / "uni.wav"
    _speak(UNICODE_TEXT, raw)
    out = uni_dir / "片段 01.wav"
    shutil.copyfile(raw, out)
    hard_files["unicode_path"] = out
    add(out, UNICODE_TEXT, "unicode_path")

    shutil.rmtree(tmp)
    manifest = {
        "version": CORPUS_VERSION,
        "clips": entries,
        "long_path": str(long_path.relative_to(root)),
        "long_sentences": list(LONG_SENTENCES),
        "long_pauses": [[round(a, 4), round(b, 4)] for a, b in pauses],
        "hard": {k: str(v.relative_to(root)) for k, v in hard_files.items()},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), "utf-8")


def _load(root: Path) -> Corpus | None:
    try:
        data = json.loads((root / MANIFEST).read_text("utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if data.get("version") != CORPUS_VERSION:
        return None
    clips = [
        CorpusClip(
            path=root / e["path"],
            text=e["text"],
            duration=e["duration"],
            sample_rate=e["sample_rate"],
            channels=e["channels"],
            kind=e["kind"],
        )
        for e in data["clips"]
    ]
    if not all(c.path.is_file() for c in clips):
        return None
    return Corpus(
        root=root,
        clips=clips,
        long_path=root / data["long_path"],
        long_sentences=list(data["long_sentences"]),
        long_pauses=[(float(a), float(b)) for a, b in data["long_pauses"]],
        hard={k: root / v for k, v in data["hard"].items()},
    )


def build_corpus(dest: Path | None = None) -> Corpus:
    """Return the corpus at ``dest`` (default: the fixture cache), building it if needed."""
    root = Path(dest) if dest is not None else corpus_cache_dir()
    found = _load(root)
    if found is not None:
        return found
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _build(work)
        if root.exists():
            # Incomplete or outdated: replace it (another process may have just finished one).
            if _load(root) is not None:
                shutil.rmtree(work)
                return _load(root)  # type: ignore[return-value]
            shutil.rmtree(root)
        try:
            os.rename(work, root)
        except OSError:
            # Another builder won the race; theirs is as good as ours.
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    corpus = _load(root)
    if corpus is None:  # pragma: no cover - only if the files vanish under us
        raise EnvironmentProblem(f"the test corpus at {root} is incomplete", f"delete {root}")
    return corpus


def corpus_summary(corpus: Corpus) -> list[dict]:
    """JSON-able list of the clips (for the demo and debugging)."""
    return [{**asdict(c), "path": str(c.path)} for c in corpus.clips]


def write_damaged(folder: Path) -> dict[str, Path]:
    """Damaged files of the kinds users have, made fresh in ``folder`` (seeded, deterministic):

    - ``aac``: a 10 min AAC .m4a whose frames are 5 % overwritten: ffmpeg writes hundreds of KB
      of decoder errors (more than a pipe holds) and exits non-zero.
    - ``text_flac``: text bytes named .flac (ffprobe guesses FLAC and reports rate 0).
    - ``mp3``: random bytes named .mp3 (libsndfile's mpg123 prints warnings to stderr).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    out: dict[str, Path] = {}
    aac = folder / "damaged.m4a"
    _run([_need("ffmpeg"), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
          "-i", "sine=frequency=440:duration=600", "-ac", "1", "-ar", "24000",
          "-movflags", "+faststart", "-fflags", "+bitexact", "-flags:a", "+bitexact",
          str(aac)])  # fmt: skip
    data = np.frombuffer(aac.read_bytes(), np.uint8).copy()
    start = int(data.tobytes().find(b"mdat")) + 100  # keep the header: only frames are hit
    hit = start + np.flatnonzero(rng.random(data.size - start) < 0.05)
    data[hit] = rng.integers(0, 256, hit.size, dtype=np.uint8)
    aac.write_bytes(data.tobytes())
    out["aac"] = aac
    out["text_flac"] = folder / "notes.flac"
    out["text_flac"].write_text("hello world, this is not audio\n" * 200, encoding="utf-8")
    out["mp3"] = folder / "broken.mp3"
    out["mp3"].write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    return out
