"""Driving one loaded ``CosyVoice3`` for many requests (``voicelab serve``).

Upstream's ``CosyVoice2Model.tts`` runs the LLM in a thread of its own (``llm_job``) that appends
speech tokens to ``tts_speech_token_dict[uuid]`` until the LLM stops, and has no way to stop it:
closing the ``inference_sft`` generator leaves that thread generating to its length limit (GPU
time nobody hears) and leaves the request's entries in the model's dicts. For a server whose
client hung up, or whose request ran out of time, :func:`abort_inference` ends the running LLM
at its next token: the token list is swapped for one whose ``append`` raises
:class:`InferenceAborted` (the thread ends there; its exception is not reported), and
``llm_end_dict`` says "done", so ``tts`` stops waiting and returns what it has.
:func:`drop_leftovers` then removes the entries a closed generator left behind.

Speakers of several exported voices live side by side in ``frontend.spk2info`` under names of
our choosing (:func:`register_speaker`), so switching voice needs no reload.
"""

from __future__ import annotations

import threading
from typing import Any


class InferenceAborted(Exception):
    """Raised inside upstream's LLM thread to end it (never reaches a user)."""


class _AbortedTokens(list):  # type: ignore[type-arg]
    """The tokens so far; the LLM thread's next ``append`` ends it."""

    hit = False
    age = 0  # drop_leftovers calls seen without a hit (a thread that had already ended)

    def append(self, item: Any) -> None:
        self.hit = True
        raise InferenceAborted


_MAX_AGE = 20
_hook_lock = threading.Lock()
_hook_installed = False


def _install_excepthook() -> None:
    """Keep an aborted LLM thread's InferenceAborted out of stderr; others go on as before."""
    global _hook_installed
    with _hook_lock:
        if _hook_installed:
            return
        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            if not isinstance(args.exc_value, InferenceAborted):
                previous(args)

        threading.excepthook = hook
        _hook_installed = True


def _dicts(cosyvoice: Any) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]] | None:
    model = getattr(cosyvoice, "model", None)
    needed = ("lock", "tts_speech_token_dict", "llm_end_dict", "hift_cache_dict")
    if model is None or not all(hasattr(model, n) for n in needed):
        return None
    return model.lock, model.tts_speech_token_dict, model.llm_end_dict, model.hift_cache_dict


def abort_inference(cosyvoice: Any) -> int:
    """End every LLM thread of this model at its next token; the number of runs aborted."""
    found = _dicts(cosyvoice)
    if found is None:
        return 0
    _install_excepthook()
    lock, tokens, ended, _ = found
    n = 0
    with lock:
        for uid, toks in list(tokens.items()):
            if not isinstance(toks, _AbortedTokens):
                tokens[uid] = _AbortedTokens(toks)
                n += 1
            ended[uid] = True
    return n


def drop_leftovers(cosyvoice: Any) -> None:
    """After a request's generator is closed: abort what still runs, drop what has ended.

    Only called when no synthesis runs on this model (one at a time), so every entry left is a
    closed request's. An aborted run's entry stays until its thread has hit the abort (dropping
    it earlier would turn the thread's end into a KeyError traceback), or for a few calls when
    its thread had ended on its own.
    """
    found = _dicts(cosyvoice)
    if found is None:
        return
    lock, tokens, ended, hift = found
    with lock:
        for uid, toks in list(tokens.items()):
            if isinstance(toks, _AbortedTokens) and not toks.hit:
                toks.age += 1
                if toks.age < _MAX_AGE:
                    continue
            if not ended.get(uid):
                _install_excepthook()
                tokens[uid] = _AbortedTokens(toks)
                ended[uid] = True
                continue
            tokens.pop(uid, None)
            ended.pop(uid, None)
            hift.pop(uid, None)


def register_speaker(cosyvoice: Any, name: str, embedding: Any) -> None:
    """Make ``name`` an SFT speaker of this model (``inference_sft(text, name)``)."""
    frontend = cosyvoice.frontend
    device = getattr(frontend, "device", "cpu")
    frontend.spk2info[name] = {"embedding": embedding.to(device)}
