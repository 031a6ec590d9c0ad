"""Upstream's LLM objective (``Qwen2LM.forward`` of ``CosyVoice3LM``), built vectorized.

Both input layouts upstream trains on have the same length, ``2 + instruct + text + speech``:

* unistream: ``sos, instruct, text, task_id, speech`` -> targets ``ignore..., speech, eos``;
* bistream (chosen per sample with probability 0.5 when speech/text > mix[1]/mix[0]): ``sos,
  instruct``, then chunks of ``mix[0]`` text and ``mix[1]`` speech tokens (target: the chunk's
  speech, then ``fill``), the rest of the text, ``task_id``, the rest of the speech, ``eos``.

Each utterance's two layouts are index arrays made once (:func:`layouts`); a batch only picks one
per sample with upstream's draw (``random.random()``, in batch order, for every sample) and pads
(:func:`make_batch`). On the device: one gather from the text embedding (Qwen's
``embed_tokens``) and one from ``speech_embedding`` (sos/task_id are rows of it in CosyVoice 3),
the Qwen2 body without its 151,936-word head (upstream computes it and throws it away), then
``llm_decoder`` and upstream's label-smoothed KL loss and accuracy, in closed form and without
host syncs. Right padding under a causal mask cannot change any kept position, so the body runs
without a padding mask (flash/SDPA causal kernels).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

IGNORE_ID = -1


@dataclass
class Layout:
    ids: np.ndarray  # token ids (Qwen vocabulary where not speech, speech vocabulary where speech)
    speech: np.ndarray  # bool: embed from speech_embedding
    target: np.ndarray


@dataclass
class Tokens:
    """CosyVoice3LM's special ids and mix ratio."""

    sos: int
    task_id: int
    eos: int
    fill: int
    mix: tuple[int, int]

    @classmethod
    def of(cls, llm: Any) -> Tokens:
        return cls(
            int(llm.sos),
            int(llm.task_id),
            int(llm.eos_token),
            int(llm.fill_token),
            (int(llm.mix_ratio[0]), int(llm.mix_ratio[1])),
        )


def unistream(text: np.ndarray, instruct: np.ndarray, speech: np.ndarray, t: Tokens) -> Layout:
    li, lt, ls = len(instruct), len(text), len(speech)
    ids = np.concatenate([[t.sos], instruct, text, [t.task_id], speech]).astype(np.int64)
    sp = np.concatenate([[True], np.zeros(li + lt, bool), [True], np.ones(ls, bool)])
    tgt = np.concatenate([np.full(1 + li + lt, IGNORE_ID), speech, [t.eos]]).astype(np.int64)
    return Layout(ids, sp, tgt)


def bistream(text: np.ndarray, instruct: np.ndarray, speech: np.ndarray, t: Tokens) -> Layout:
    a, b = t.mix
    ids: list[Any] = [[t.sos], instruct]
    sp: list[Any] = [[True], np.zeros(len(instruct), bool)]
    tgt: list[Any] = [[IGNORE_ID], np.full(len(instruct), IGNORE_ID)]
    lt = len(text)
    for j in range(-(-(lt + 1) // a)):  # upstream: ceil((text_len + 1) / a)
        tc = text[j * a : (j + 1) * a]
        if len(tc) == a:
            sc = speech[j * b : (j + 1) * b]
            ids += [tc, sc]
            sp += [np.zeros(a, bool), np.ones(b, bool)]
            tgt += [np.full(a - 1, IGNORE_ID), sc, [t.fill]]
        else:
            rest = speech[j * b :]
            ids += [tc, [t.task_id], rest]
            sp += [np.zeros(len(tc), bool), [True], np.ones(len(rest), bool)]
            tgt += [np.full(len(tc), IGNORE_ID), rest, [t.eos]]
    return Layout(
        np.concatenate(ids).astype(np.int64),
        np.concatenate(sp).astype(bool),
        np.concatenate(tgt).astype(np.int64),
    )


def bistream_ok(text_len: int, speech_len: int, t: Tokens) -> bool:
    return text_len > 0 and speech_len / text_len > t.mix[1] / t.mix[0]


def layouts(text: Any, instruct: Any, speech: Any, t: Tokens) -> tuple[Layout, Layout | None]:
    tx, ins, spc = (np.asarray(x, dtype=np.int64) for x in (text, instruct, speech))
    uni = unistream(tx, ins, spc, t)
    bi = bistream(tx, ins, spc, t) if bistream_ok(len(tx), len(spc), t) else None
    return uni, bi


def choose(pairs: list[tuple[Layout, Layout | None]]) -> list[Layout]:
    """Upstream's per-sample draw: ``random.random()`` for every sample, in batch order."""
    out = []
    for uni, bi in pairs:
        r = random.random()
        out.append(bi if (r < 0.5 and bi is not None) else uni)
    return out


def make_batch(chosen: list[Layout], quantum: int = 1) -> dict[str, np.ndarray]:
    """Right-padded (B, T) arrays, T rounded up to ``quantum``."""
    from voicelab.upstream.engine.batching import padded

    n = max(len(x.ids) for x in chosen)
    t = padded(n, quantum)
    ids = np.zeros((len(chosen), t), np.int64)
    sp = np.zeros((len(chosen), t), bool)
    tgt = np.full((len(chosen), t), IGNORE_ID, np.int64)
    for i, x in enumerate(chosen):
        k = len(x.ids)
        ids[i, :k], sp[i, :k], tgt[i, :k] = x.ids, x.speech, x.target
    return {"ids": ids, "speech": sp, "target": tgt}


def label_smoothing_loss(
    logits: Any, target: Any, smoothing: float, normalize_length: bool = True
) -> Any:
    """Upstream's ``LabelSmoothingLoss`` (KL to the smoothed one-hot, ignored positions out) in
    closed form: no (N, V) target distribution, no ``.item()``."""
    import math

    import torch
    import torch.nn.functional as F

    v = logits.size(-1)
    x = logits.reshape(-1, v).float()
    y = target.reshape(-1)
    keep = y != IGNORE_ID
    y0 = y.clamp(min=0)
    count = keep.sum()
    denom = count if normalize_length else torch.tensor(float(logits.size(0)), device=x.device)
    if smoothing == 0:
        ce = F.cross_entropy(x, y0, reduction="none")
        return (ce * keep).sum() / denom
    conf = 1.0 - smoothing
    s = smoothing / (v - 1)
    lse = torch.logsumexp(x, dim=-1)
    logp_y = x.gather(1, y0.unsqueeze(1)).squeeze(1) - lse
    sum_logp = x.sum(-1) - v * lse
    const = conf * math.log(conf) if conf > 0 else 0.0
    const += (v - 1) * s * math.log(s) if s > 0 else 0.0
    kl = const - (s * (sum_logp - logp_y) + conf * logp_y)
    return (kl * keep).sum() / denom


def accuracy(logits: Any, target: Any) -> Any:
    """Upstream's ``th_accuracy`` without ``masked_select`` (a host sync on CUDA)."""
    keep = target != IGNORE_ID
    hit = (logits.argmax(-1) == target) & keep
    return (hit.sum() / keep.sum()).detach()


def qwen_body(llm: Any) -> Any:
    """The Qwen2 decoder stack (``Qwen2Model``) inside upstream's ``Qwen2Encoder``."""
    return llm.llm.model.model


def forward(llm: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """{'loss', 'acc'} of a batch from :func:`make_batch` (tensors on the model's device)."""
    import torch

    ids, sp, target = batch["ids"], batch["speech"], batch["target"]
    body = qwen_body(llm)
    text_emb = body.embed_tokens(torch.where(sp, 0, ids))
    speech_emb = llm.speech_embedding(torch.where(sp, ids, 0))
    x = torch.where(sp.unsqueeze(-1), speech_emb, text_emb)
    h = body(inputs_embeds=x, use_cache=False).last_hidden_state
    logits = llm.llm_decoder(h)
    crit = llm.criterion_ce
    loss = label_smoothing_loss(logits, target, float(crit.smoothing), bool(crit.normalize_length))
    return {"loss": loss, "acc": accuracy(logits, target)}
