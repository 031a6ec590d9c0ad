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

Packed steps (:func:`make_packed`, :func:`forward_packed`): the ``accum_grad`` batches of one
optimizer step go through the model as one pass. Their sequences are packed, unpadded, into a few
rows of a fixed length (first fit, longest first) with a block-diagonal causal mask and position
ids that restart at every sequence, so no sequence sees another and each is computed as if alone.
The loss keeps upstream's per-batch normalization (each batch's sum over its own token count,
then the batches' mean), so the gradient is the one upstream accumulates over ``accum_grad``
backward passes; the step costs one pass of launches instead of ``accum_grad`` and pads only the
rows' tails, and the few row counts make few distinct shapes.
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
    import torch

    kl, keep = smoothed_kl(logits, target, smoothing)
    if normalize_length:
        return kl.sum() / keep.sum()
    return kl.sum() / torch.tensor(float(logits.size(0)), device=kl.device)


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


# ------------------------------------------------------------------------------------------------
# Packed steps: the accum_grad batches of one optimizer step in one pass
# ------------------------------------------------------------------------------------------------
ROW = 1024  # packed row length: most utterances (< 30 s) fit one; a longer one widens the row
ROW_QUANTUM = 256


def pack_rows(lengths: list[int], row: int) -> list[list[int]]:
    """First-fit decreasing: sequence indices per row, no row longer than ``row``."""
    rows: list[list[int]] = []
    used: list[int] = []
    for k in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        n = lengths[k]
        for r, u in enumerate(used):
            if u + n <= row:
                rows[r].append(k)
                used[r] += n
                break
        else:
            rows.append([k])
            used.append(n)
    return rows


def packed_shape(lengths: list[int], row: int = ROW) -> tuple[int, int]:
    """(rows, row length) :func:`make_packed` makes of sequences of these lengths."""
    from voicelab.upstream.engine.batching import padded

    width = max(row, padded(max(lengths), ROW_QUANTUM))
    return len(pack_rows(lengths, width)), width


def make_packed(
    groups: list[list[Layout]], row: int = ROW, at_least: tuple[int, int] = (0, 0)
) -> dict[str, np.ndarray]:
    """(R, L) arrays of the batches ``groups`` (one layout list per batch, upstream's draws
    already made) packed into rows: ids, speech, target as :func:`make_batch`, plus ``pos``
    (position in its sequence), ``seq`` (sequence number; the padding tail of a row is one more
    sequence of its own) and ``mb`` (which batch), and ``utts`` (utterances per batch).
    ``at_least``: pad to at least these (rows, row length) with rows of padding only (one
    shape for every pass: what CUDA graphs replay); no kept position changes."""
    from voicelab.upstream.engine.batching import padded

    seqs = [(m, x) for m, g in enumerate(groups) for x in g]
    lengths = [len(x.ids) for _, x in seqs]
    width = max(row, padded(max(lengths), ROW_QUANTUM))
    rows = pack_rows(lengths, width)
    width = max(width, at_least[1])
    shape = (max(len(rows), at_least[0]), width)
    ids = np.zeros(shape, np.int64)
    sp = np.zeros(shape, bool)
    tgt = np.full(shape, IGNORE_ID, np.int64)
    pos = np.zeros(shape, np.int64)
    seq = np.full(shape, len(seqs), np.int64)
    mb = np.zeros(shape, np.int64)
    for r, ks in enumerate(rows):
        at = 0
        for k in ks:
            m, x = seqs[k]
            n = len(x.ids)
            ids[r, at : at + n], sp[r, at : at + n], tgt[r, at : at + n] = x.ids, x.speech, x.target
            pos[r, at : at + n] = np.arange(n)
            seq[r, at : at + n] = k
            mb[r, at : at + n] = m
            at += n
        pos[r, at:] = np.arange(width - at)
    pos[len(rows) :] = np.arange(width)
    utts = np.asarray([len(g) for g in groups], np.int64)
    return {"ids": ids, "speech": sp, "target": tgt, "pos": pos, "seq": seq, "mb": mb, "utts": utts}


def packed_mask(seq: Any) -> Any:
    """(R, 1, L, L) bool, True where a position may attend: same sequence and not later. A 4D
    mask goes to the attention as given (transformers' custom-mask path)."""
    import torch

    n = seq.size(1)
    causal = torch.ones(n, n, dtype=torch.bool, device=seq.device).tril()
    return ((seq.unsqueeze(2) == seq.unsqueeze(1)) & causal).unsqueeze(1)


def smoothed_kl(logits: Any, target: Any, smoothing: float) -> tuple[Any, Any]:
    """Per position: upstream's label-smoothed KL (as :func:`label_smoothing_loss`) and whether
    the position counts, flattened."""
    import math

    import torch
    import torch.nn.functional as F

    v = logits.size(-1)
    x = logits.reshape(-1, v).float()
    y = target.reshape(-1)
    keep = y != IGNORE_ID
    y0 = y.clamp(min=0)
    if smoothing == 0:
        return F.cross_entropy(x, y0, reduction="none") * keep, keep
    conf = 1.0 - smoothing
    s = smoothing / (v - 1)
    lse = torch.logsumexp(x, dim=-1)
    logp_y = x.gather(1, y0.unsqueeze(1)).squeeze(1) - lse
    sum_logp = x.sum(-1) - v * lse
    const = conf * math.log(conf) if conf > 0 else 0.0
    const += (v - 1) * s * math.log(s) if s > 0 else 0.0
    kl = const - (s * (sum_logp - logp_y) + conf * logp_y)
    return kl * keep, keep


def forward_packed(llm: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """{'loss', 'acc'} of a :func:`make_packed` batch: the means over its batches of each
    batch's loss and accuracy as upstream computes them (so the gradient of ``loss`` times the
    batch count over ``accum_grad`` is upstream's accumulated gradient)."""
    import torch

    ids, sp, target = batch["ids"], batch["speech"], batch["target"]
    body = qwen_body(llm)
    text_emb = body.embed_tokens(torch.where(sp, 0, ids))
    speech_emb = llm.speech_embedding(torch.where(sp, ids, 0))
    x = torch.where(sp.unsqueeze(-1), speech_emb, text_emb)
    h = body(
        inputs_embeds=x,
        attention_mask=packed_mask(batch["seq"]),
        position_ids=batch["pos"],
        use_cache=False,
    ).last_hidden_state
    logits = llm.llm_decoder(h)
    crit = llm.criterion_ce
    kl, keep = smoothed_kl(logits, target, float(crit.smoothing))
    mb = batch["mb"].reshape(-1)
    n_mb = batch["utts"].numel()
    zeros = torch.zeros(n_mb, dtype=torch.float32, device=kl.device)
    sums = zeros.scatter_add(0, mb, kl)
    counts = zeros.scatter_add(0, mb, keep.float())
    denom = counts if bool(crit.normalize_length) else batch["utts"].float()
    hits = (logits.argmax(-1).reshape(-1) == target.reshape(-1)) & keep
    acc = zeros.scatter_add(0, mb, hits.float()) / counts
    return {"loss": (sums / denom).mean(), "acc": acc.mean().detach()}


def packs(llm: Any) -> bool:
    """Whether the Qwen body takes a custom 4D mask (SDPA or eager attention; flash kernels
    take none)."""
    impl = getattr(qwen_body(llm).config, "_attn_implementation", None) or "eager"
    return impl in ("sdpa", "eager")
