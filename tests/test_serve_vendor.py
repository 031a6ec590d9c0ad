"""`voicelab serve` speaking with upstream's CosyVoice3 on the tiny random model (CPU).

A real server process on a free loopback port, real clients (httpx and the openai package).
Two voices of one base (different speaker embeddings, different llm.pt) share one loaded
model. The tiny random LLM speaks until its length limit, about 20 speech tokens per text
token, so audio length follows the text, and a long text keeps the model busy for long.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.vendor
httpx = pytest.importorskip("httpx", reason="httpx (test extra) is not installed")
pytest.importorskip("fastapi", reason="the serve extra is not installed")

CACHE = Path(os.environ.get("VOICELAB_TEST_CACHE", Path(__file__).resolve().parents[1] / ".cache"))
BARE = "<|endofprompt|>"  # the shortest instruct: short takes
RATE = 24000
LONG = " ".join(["The quick brown fox jumps over the lazy dog near the old stone bridge."] * 4)
# Three segments of LONG: about 80 s of synthesis without streaming on 2 CPU cores (LONG alone:
# ~30 s without streaming, ~4 minutes streamed, whose chunks grow).
VERY_LONG = " ".join([LONG] * 3)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory):
    import torch

    from voicelab.fsutil import link_or_copy
    from voicelab.upstream.tinymodel import build_tiny_model
    from voicelab.workspace import Workspace

    tiny = build_tiny_model(CACHE / "tiny-cosyvoice3-synth")
    root = tmp_path_factory.mktemp("serve-vendor") / "ws"
    ws = Workspace.init(root, "spk1", options={"prepare": {"instruct": BARE}})

    def voice(name: str, speaker: str, seed: int, llm_scale: float | None = None) -> None:
        d = ws.pretrained_dir / name
        for src in tiny.rglob("*"):
            if src.is_file() and not (llm_scale and src.name == "llm.pt"):
                link_or_copy(src, d / src.relative_to(tiny))
        if llm_scale:  # a voice with llm weights of its own (as a fine-tuned export has)
            state = torch.load(tiny / "llm.pt", map_location="cpu", weights_only=True)
            scaled = {k: v * llm_scale if v.is_floating_point() else v for k, v in state.items()}
            torch.save(scaled, d / "llm.pt")
        gen = torch.Generator().manual_seed(seed)
        emb = torch.randn(1, 192, generator=gen, dtype=torch.float32)
        torch.save({speaker: {"embedding": emb}}, d / "spk2info.pt")
        prov = {"speaker": speaker, "base_model": {"name": "tiny-base", "id": "tiny-1"}}
        (d / "voicelab.json").write_text(json.dumps(prov), encoding="utf-8")

    voice(ws.voice_name, "spk1", 0)
    voice("second", "spk2", 1, llm_scale=1.02)
    return ws


@pytest.fixture(scope="module")
def server(workspace) -> Iterator:
    from voicelab.testing.server import ServerProcess

    with ServerProcess(workspace.root, ["--max-queue", "2", "--timeout", "300"]) as srv:
        srv.wait_ready(300)
        yield srv


def _speech(url: str, timeout: float = 120, **body) -> httpx.Response:
    body.setdefault("voice", "spk1")
    return httpx.post(f"{url}/v1/audio/speech", json=body, timeout=timeout)


def _idle(url: str, within: float) -> float:
    """Seconds until the model is idle with nothing queued; fails after ``within``."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        (model,) = httpx.get(f"{url}/health").json()["models"]
        if not model["busy"] and model["queue_depth"] == 0:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"model still busy after {within} s")


def test_every_format_decodes(server) -> None:
    wav = _speech(server.url, input="Hi.", response_format="wav", seed=1)
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    ref, rate = sf.read(io.BytesIO(wav.content), dtype="float32")
    assert rate == RATE and len(ref) > 0.3 * RATE and np.abs(ref).max() > 0
    pcm = _speech(server.url, input="Hi.", response_format="pcm", seed=1)
    assert pcm.headers["content-type"] == "audio/pcm" and len(pcm.content) == 2 * len(ref)
    for fmt in ("mp3", "opus", "flac"):
        resp = _speech(server.url, input="Hi.", response_format=fmt, seed=1)
        assert resp.status_code == 200, resp.text
        audio, rate = sf.read(io.BytesIO(resp.content), dtype="float32")
        assert rate == RATE and abs(len(audio) - len(ref)) < 0.1 * RATE, fmt


def test_openai_client(server) -> None:
    openai = pytest.importorskip("openai", reason="openai (test extra) is not installed")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    resp = client.audio.speech.create(
        model="tts-1",
        voice="second",
        input="你好。",
        response_format="flac",
        extra_body={"seed": 2},
    )
    audio, rate = sf.read(io.BytesIO(resp.content), dtype="float32")
    assert rate == RATE and len(audio) > 0.3 * RATE
    with pytest.raises(openai.BadRequestError, match="speed"):
        client.audio.speech.create(model="tts-1", voice="second", input="hi", speed=3.0)


def test_voices_share_one_model(server, workspace) -> None:
    (model,) = httpx.get(f"{server.url}/health").json()["models"]
    assert model["voices"] == [workspace.voice_name, "second"]
    a1 = _speech(
        server.url, input="你好。", voice=workspace.voice_name, response_format="pcm", seed=3
    )
    b = _speech(server.url, input="你好。", voice="second", response_format="pcm", seed=3)
    a2 = _speech(server.url, input="你好。", voice="spk1", response_format="pcm", seed=3)
    assert a1.status_code == b.status_code == a2.status_code == 200
    assert a1.content == a2.content  # back to the first voice: its own weights and speaker
    assert a1.content != b.content
    assert len(httpx.get(f"{server.url}/v1/models").json()["data"]) == 1  # one model, 2 voices


def test_stream_sends_audio_before_the_end(server) -> None:
    body = {"input": LONG[:60], "voice": "spk1", "response_format": "wav", "stream": True}
    start = time.monotonic()
    arrivals: list[tuple[float, int]] = []
    data = b""
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", json=body, timeout=300) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"] == "audio/wav"
        for piece in resp.iter_bytes():
            arrivals.append((time.monotonic() - start, len(piece)))
            data += piece
    total = time.monotonic() - start
    first = arrivals[0][0]
    assert len(arrivals) >= 3
    assert first < 0.5 * total, (first, total)
    with sf.SoundFile(io.BytesIO(data)) as f:
        assert f.samplerate == RATE
        audio = f.read(dtype="float32")
    assert len(audio) > 1 * RATE
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        s.name: s.value
        for fam in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
        for s in fam.samples
        if not s.labels or s.name.endswith("_total")
    }
    assert samples["voicelab_first_chunk_seconds_count"] >= 1
    assert samples["voicelab_rtf_count"] >= 1 and samples["voicelab_rtf_sum"] > 0
    assert samples["voicelab_audio_seconds_total"] >= len(audio) / RATE - 0.01


def test_32_requests_from_8_clients(server) -> None:
    """Each answer is its own request's audio (compared byte for byte with the same request
    made alone), or a 503 with Retry-After; nothing is lost."""
    specs = [("Hi.", 1), ("Hello there.", 2), ("好。", 3), ("Good morning to you.", 4)]
    ref = {}
    for text, seed in specs:
        r = _speech(server.url, input=text, response_format="pcm", seed=seed)
        assert r.status_code == 200
        ref[(text, seed)] = r.content
    assert len({len(v) for v in ref.values()}) > 1
    results: list[tuple[tuple[str, int], int, bytes, dict]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(timeout=300) as http:
            for i in range(4):
                spec = specs[(c + i) % len(specs)]
                r = http.post(
                    f"{server.url}/v1/audio/speech",
                    json={
                        "input": spec[0],
                        "voice": "spk1",
                        "response_format": "pcm",
                        "seed": spec[1],
                    },
                )
                with lock:
                    results.append((spec, r.status_code, r.content, dict(r.headers)))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert len(results) == 32
    ok = [r for r in results if r[1] == 200]
    busy = [r for r in results if r[1] == 503]
    assert len(ok) + len(busy) == 32, [r[1] for r in results]
    assert len(ok) >= 3  # the first three (one running, two waiting) at least
    for spec, _, content, _ in ok:
        assert content == ref[spec], spec
    for _, _, content, headers in busy:
        assert json.loads(content)["error"]["code"] == "queue_full"
        assert int(headers["retry-after"]) > 0
    _idle(server.url, 30)


def test_disconnect_frees_the_slot(server) -> None:
    """A client that hangs up (streaming or not) frees the model within seconds, while its text
    would have kept it busy for minutes (see LONG). The wait is the chunk being computed when
    the client left (upstream cannot stop inside one)."""
    body = {"input": LONG, "voice": "spk1", "response_format": "pcm", "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", json=body, timeout=300) as resp:
        assert resp.status_code == 200
        next(resp.iter_bytes())  # audio has started; now hang up
    assert _idle(server.url, 40) < 40
    # Not streaming: the client gives up waiting.
    with pytest.raises(httpx.ReadTimeout):
        _speech(server.url, timeout=2.0, input=VERY_LONG, response_format="wav")
    assert _idle(server.url, 40) < 40
    # The model still speaks correctly afterwards.
    r = _speech(server.url, input="Hi.", response_format="wav", seed=1)
    assert r.status_code == 200 and sf.info(io.BytesIO(r.content)).samplerate == RATE


def test_key_and_time_limit_off_localhost(workspace) -> None:
    """Bound to 127.0.0.2 with a key: no key, no speech; a request over --timeout gets 504 and
    its slot back; Ctrl+C does not wait for a long request to finish."""
    from voicelab.testing.server import ServerProcess

    key = "k-123"
    args = ["--api-key", key, "--timeout", "3", "--max-queue", "0"]
    with ServerProcess(
        workspace.root, args, host="127.0.0.2", log=workspace.root / "s2.log"
    ) as srv:
        srv.wait_ready(300)
        url = f"{srv.url}/v1/audio/speech"
        denied = httpx.post(url, json={"input": "Hi.", "voice": "spk1"})
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        auth = {"Authorization": f"Bearer {key}"}
        start = time.monotonic()
        slow = httpx.post(url, json={"input": VERY_LONG, "voice": "spk1"}, headers=auth, timeout=60)
        assert slow.status_code == 504 and slow.json()["error"]["code"] == "timeout"
        assert time.monotonic() - start < 10
        deadline = time.monotonic() + 40
        while httpx.get(f"{srv.url}/health").json()["models"][0]["busy"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # The openai client sends the key as a Bearer token.
        openai = pytest.importorskip("openai", reason="openai (test extra) is not installed")
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=key, max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny-base"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{srv.url}/v1", api_key="wrong", max_retries=0).models.list()
        # Ctrl+C while a long request runs: the server stops by itself, without finishing it.
        long_body = {"input": VERY_LONG, "voice": "spk1"}
        hung = threading.Thread(
            target=lambda: httpx.post(url, json=long_body, headers=auth, timeout=60),
            daemon=True,
        )
        hung.start()
        deadline = time.monotonic() + 30
        while not httpx.get(f"{srv.url}/health").json()["models"][0]["busy"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        start = time.monotonic()
        srv.stop()
        assert srv.proc is not None and srv.proc.returncode != -9  # not killed by stop()
        # VERY_LONG alone takes ~80 s here; a stop waits ~3 s, then for the audio being
        # computed from the tokens so far (CPU: seconds, GPU: well under one).
        assert time.monotonic() - start < 45


def test_cancel_stops_upstream_llm(workspace) -> None:
    """Engine.cancel ends upstream's LLM thread at its next token (streamed or not) and leaves no
    per-request state in the model for the next job."""
    from voicelab.blocks.tts_text import plan_utterance
    from voicelab.serve.engine import Cancelled, Engine, Job
    from voicelab.serve.voices import find_voices

    voice = find_voices(workspace.pretrained_dir)[0]
    engine = Engine([voice])
    engine.load()
    assert engine.state == "ready", engine.error
    model = engine.synth.cosy.model

    def llm_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if "llm_job" in t.name]

    for stream in (False, True):
        job = Job(voice, [plan_utterance(LONG, BARE)], stream=stream)
        fut = engine.submit(job)
        deadline = time.monotonic() + 120
        while not any(len(t) > 5 for t in list(model.tts_speech_token_dict.values())):
            assert time.monotonic() < deadline, "upstream's LLM produced no tokens"
            time.sleep(0.05)
        engine.cancel(job)
        runs = list(model.tts_speech_token_dict.values())  # the tokens as of the abort
        with pytest.raises(Cancelled):
            fut.result(120)
        deadline = time.monotonic() + 20
        while llm_threads():
            assert time.monotonic() < deadline, "upstream's LLM thread still runs"
            time.sleep(0.05)
        # The thread ended by trying to add a token after the abort, not at its length limit.
        assert any(getattr(r, "hit", False) for r in runs), stream
    short = engine.submit(Job(voice, [plan_utterance("Hi.", BARE)], seed=1)).result(120)
    assert short.seconds > 0.3
    assert not model.tts_speech_token_dict and not model.llm_end_dict
    engine.shutdown()
