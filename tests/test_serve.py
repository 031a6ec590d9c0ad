"""`voicelab serve` without a model: a real server process (its model cannot load here, or is
held at "loading"), real HTTP clients (httpx, openai). The speaking half is in
test_serve_vendor.py."""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (test extra) is not installed")

from voicelab.serve import encode  # noqa: E402
from voicelab.serve.engine import QueueFull, SerialQueue  # noqa: E402
from voicelab.testing.server import ServerProcess, free_port  # noqa: E402
from voicelab.workspace import Workspace  # noqa: E402

RATE = 24000


def _tone(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _add_voice(ws: Workspace, name: str, speaker: str, base_id: str = "b1") -> Path:
    """A voice folder as export leaves it, minus the model files (so it cannot load)."""
    d = ws.pretrained_dir / name
    d.mkdir(parents=True)
    (d / "spk2info.pt").write_bytes(b"")
    prov = {"speaker": speaker, "created": "2026-01-01T00:00:00+00:00"}
    prov["base_model"] = {"name": "Fun-CosyVoice3-0.5B", "id": base_id, "path": "/x"}
    prov["llm"] = {"rule": "best:1", "checkpoints": [{"file": "epoch_3_whole.pt"}]}
    prov["flow"] = {"base": True}
    (d / "voicelab.json").write_text(json.dumps(prov), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace.init(tmp_path_factory.mktemp("serve") / "ws", "xuan")
    _add_voice(ws, ws.voice_name, "xuan")
    _add_voice(ws, "other-voice", "lin")
    (ws.pretrained_dir / "not-a-voice").mkdir()
    return ws


@pytest.fixture(scope="module")
def server(workspace: Workspace) -> Iterator[ServerProcess]:
    with ServerProcess(workspace.root, ["--max-input", "200"]) as srv:
        deadline = time.monotonic() + 60
        while httpx.get(f"{srv.url}/health").json()["status"] == "loading":
            assert time.monotonic() < deadline, srv.output()
            time.sleep(0.2)
        yield srv


# ---- encoders ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "flac"])
def test_encoders_decode_back(fmt: str) -> None:
    audio = _tone(1.0)
    data = encode.encode(audio, RATE, fmt)
    back, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == RATE
    # Lossy codecs pad a little at the ends; the length stays within 100 ms.
    assert abs(len(back) - len(audio)) < 0.1 * RATE
    if fmt in ("wav", "flac"):
        assert np.abs(back - audio).max() < 1e-3


def test_pcm_and_streamed_wav() -> None:
    audio = _tone(0.5)
    pcm = encode.encode(audio, RATE, "pcm")
    assert len(pcm) == 2 * len(audio)
    back = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32767
    assert np.abs(back - audio).max() < 1e-4
    # A streamed wav: header with unknown sizes, then chunks of pcm as they come.
    streamed = (
        encode.wav_stream_header(RATE) + encode.pcm16(audio[:5000]) + encode.pcm16(audio[5000:])
    )
    with sf.SoundFile(io.BytesIO(streamed)) as f:
        assert f.samplerate == RATE and f.channels == 1
        got = f.read(dtype="float32")
    assert len(got) == len(audio)
    assert set(encode.check_encoders()) == set(encode.FORMATS)


# ---- the queue --------------------------------------------------------------------------------
def test_serial_queue_bounds_and_order() -> None:
    q = SerialQueue(max_waiting=2)
    gate = threading.Event()
    order: list[int] = []
    running = threading.Event()

    def job(i: int) -> int:
        if i == 0:
            running.set()
            gate.wait(10)
        order.append(i)
        return i

    futs = [q.submit(lambda: job(0))]
    assert running.wait(5) and q.running and q.waiting == 0
    futs += [q.submit(lambda: job(1)), q.submit(lambda: job(2))]
    assert q.waiting == 2
    with pytest.raises(QueueFull):
        q.submit(lambda: job(3))
    gate.set()
    assert [f.result(5) for f in futs] == [0, 1, 2] and order == [0, 1, 2]
    assert q.waiting == 0 and not q.running
    assert q.submit(lambda: job(4)).result(5) == 4  # room again
    q.shutdown()


def test_serial_queue_zero_waiting() -> None:
    q = SerialQueue(max_waiting=0)
    gate = threading.Event()
    first = q.submit(lambda: gate.wait(10))
    with pytest.raises(QueueFull):
        q.submit(lambda: True)
    gate.set()
    assert first.result(5) is True
    q.shutdown()


# ---- a real server whose model cannot load -----------------------------------------------------
def _error(resp: httpx.Response, status: int, code: str, param: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["code"] == code and err["param"] == param, err
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert "Traceback" not in err["message"]
    return str(err["message"])


def test_health_voices_models(server: ServerProcess, workspace: Workspace) -> None:
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 503
    h = health.json()
    assert h["status"] == "error"
    (model,) = h["models"]  # two voices of one base: one model
    assert model["id"] == "Fun-CosyVoice3-0.5B" and model["state"] == "error"
    assert "is incomplete" in model["error"] and "voicelab export" in model["error"]
    voices = httpx.get(f"{server.url}/v1/voices").json()["data"]
    assert {v["id"]: v["speaker"] for v in voices} == {
        workspace.voice_name: "xuan",
        "other-voice": "lin",
    }
    assert all(v["base"] == "Fun-CosyVoice3-0.5B" for v in voices)
    assert voices[0]["llm"]["checkpoints"] == ["epoch_3_whole.pt"] and voices[0]["flow"] == "base"
    assert "/x" not in json.dumps(voices)  # no paths of the machine
    # What Open WebUI reads to fill its voice and model pickers.
    short = httpx.get(f"{server.url}/v1/audio/voices").json()["voices"]
    assert {v["id"]: v["name"] for v in short} == {
        workspace.voice_name: "xuan",
        "other-voice": "lin",
    }
    models = httpx.get(f"{server.url}/v1/audio/models").json()["models"]
    assert [m["id"] for m in models] == ["tts-1", "Fun-CosyVoice3-0.5B"]
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["Fun-CosyVoice3-0.5B"]


BAD = [
    ({"input": "", "voice": "xuan"}, "empty_input", "input"),
    ({"input": "   \n", "voice": "xuan"}, "empty_input", "input"),
    ({"input": "好" * 201, "voice": "xuan"}, "input_too_long", "input"),
    ({"input": "hi", "voice": "alloy"}, "voice_not_found", "voice"),
    ({"input": "hi"}, "voice_required", "voice"),
    (
        {"input": "hi", "voice": "xuan", "response_format": "aac"},
        "unsupported_format",
        "response_format",
    ),
    ({"input": "hi", "voice": "xuan", "speed": 4.0}, "invalid_speed", "speed"),
    ({"input": "hi", "voice": "xuan", "speed": "fast"}, "invalid_request", "speed"),
    ({"input": "hi", "voice": "xuan", "stream": True, "speed": 1.2}, "invalid_speed", "speed"),
    (
        {"input": "hi", "voice": "xuan", "stream": True, "response_format": "mp3"},
        "unsupported_format",
        "response_format",
    ),
    ({"input": "hi", "voice": "xuan", "model": "gpt-9"}, "model_not_found", "model"),
    ({"voice": "xuan"}, "invalid_request", "input"),
    ({"input": "hi", "voice": "xuan", "seed": -1}, "invalid_seed", "seed"),
    ({"input": "hi", "voice": "xuan", "instruct": "慢" * 201}, "input_too_long", "instruct"),
    ({"input": "hi", "voice": "xuan", "preset": "shouty"}, "invalid_input", "input"),
    ({"input": "。。！", "voice": "xuan"}, "invalid_input", "input"),
]


@pytest.mark.parametrize(("body", "code", "param"), BAD, ids=[b[1] for b in BAD])
def test_bad_inputs(server: ServerProcess, body: dict, code: str, param: str) -> None:
    resp = httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=60)
    _error(resp, 400, code, param)


def test_other_bad_requests(server: ServerProcess) -> None:
    url = f"{server.url}/v1/audio/speech"
    msg = _error(
        httpx.post(url, content=b'{"inpu', headers={"content-type": "application/json"}),
        400,
        "invalid_request",
    )
    assert "not valid JSON" in msg
    _error(httpx.get(f"{server.url}/v1/nothing"), 404, "not_found")
    _error(httpx.get(url), 405, "method_not_allowed")
    # A good request while the model cannot load: 503 with the reason, not a traceback.
    msg = _error(
        httpx.post(url, json={"input": "你好", "voice": "lin", "model": "tts-1"}),
        503,
        "model_unavailable",
    )
    assert "could not be loaded" in msg


def test_openai_client_errors(server: ServerProcess) -> None:
    openai = pytest.importorskip("openai", reason="openai (test extra) is not installed")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert e.value.code == "voice_not_found"
    assert "Fun-CosyVoice3-0.5B-xuan-sft" in str(e.value.message)
    with pytest.raises(openai.InternalServerError) as e503:
        client.audio.speech.create(model="tts-1", voice="xuan", input="hi", response_format="wav")
    assert e503.value.status_code == 503


def test_metrics(server: ServerProcess) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    url = f"{server.url}/v1/audio/speech"
    before = _samples(httpx.get(f"{server.url}/metrics").text)
    httpx.post(url, json={"input": "", "voice": "xuan"})
    httpx.post(url, json={"input": "hi", "voice": "nobody"})
    after = _samples(httpx.get(f"{server.url}/metrics").text)
    key = ("voicelab_requests_total", (("status", "400"),))
    assert after[key] - before.get(key, 0) == 2
    for code in ("empty_input", "voice_not_found"):
        k = ("voicelab_errors_total", (("code", code),))
        assert after[k] - before.get(k, 0) == 1
    assert after[("voicelab_queue_depth", (("model", "Fun-CosyVoice3-0.5B"),))] == 0
    names = {
        f.name for f in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
    }
    assert {"voicelab_first_chunk_seconds", "voicelab_rtf", "voicelab_audio_seconds"} <= names


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# ---- address and key --------------------------------------------------------------------------
def test_refuses_open_address_without_key(workspace: Workspace) -> None:
    srv = ServerProcess(workspace.root, host="0.0.0.0", env={"VOICELAB_API_KEY": ""})
    with pytest.raises(RuntimeError, match=r"refusing to serve on 0\.0\.0\.0 without an API key"):
        srv.start(timeout=60)
    assert srv.proc is not None and srv.proc.returncode == 1


def test_port_in_use(workspace: Workspace, server: ServerProcess) -> None:
    cmd = ServerProcess(workspace.root, port=server.port).command()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{server.port}" in done.stdout + done.stderr


def test_key_required_when_given(workspace: Workspace) -> None:
    """Bound to 127.0.0.2 with a key (from the environment): every route but /health needs it."""
    key = "s3cret-key"
    with ServerProcess(workspace.root, host="127.0.0.2", env={"VOICELAB_API_KEY": key}) as srv:
        assert httpx.get(f"{srv.url}/health").status_code in (200, 503)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
            resp = httpx.get(f"{srv.url}/v1/voices", headers=headers)
            assert "voicelab serve was started with" in _error(resp, 401, "invalid_api_key")
        _error(httpx.get(f"{srv.url}/metrics"), 401, "invalid_api_key")
        _error(
            httpx.post(f"{srv.url}/v1/audio/speech", json={"input": "hi"}), 401, "invalid_api_key"
        )
        ok = httpx.get(f"{srv.url}/v1/voices", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200 and len(ok.json()["data"]) == 2


# ---- a server whose model is still loading (in-process, models never loaded) ---------------------
def test_loading_answers_503_with_retry_after(workspace: Workspace) -> None:
    import uvicorn

    from voicelab.serve.app import create_app
    from voicelab.serve.server import ServeConfig, Server
    from voicelab.serve.voices import find_voices

    server = Server(find_voices(workspace.pretrained_dir), ServeConfig(instruct="<|endofprompt|>"))
    port = free_port()
    uv = uvicorn.Server(
        uvicorn.Config(create_app(server, load=False), port=port, log_level="warning")
    )
    t = threading.Thread(target=uv.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while not uv.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        resp = httpx.post(f"{url}/v1/audio/speech", json={"input": "你好", "voice": "lin"})
        assert "still loading" in _error(resp, 503, "model_loading")
        assert resp.headers["retry-after"] == "5"
    finally:
        uv.should_exit = True
        t.join(10)
