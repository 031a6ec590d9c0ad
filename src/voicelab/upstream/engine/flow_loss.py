"""Upstream's flow objective (``CausalMaskedDiffWithDiT.forward``) from cached features.

The random draws are upstream's, in upstream's order: ``random.random() < 0.5`` for streaming,
then per sample (batch order) ``random.random() < 0.5`` to skip, else ``random.randint(0,
int(0.3 * feat_len))`` frames of prompt prefix; the time step, noise and condition dropout are
drawn by upstream's own ``decoder.compute_loss``, which is called unchanged. The prompt prefixes
become one mask multiply (upstream copies them in a per-sample loop), and the mel features come
from the cache (a gather on the device) instead of a mel spectrogram per utterance and epoch.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np


def draw(feat_lens: list[int]) -> tuple[bool, list[int]]:
    """(streaming, prompt prefix frames per sample) with upstream's draws. ``0.3 * feat_len`` is
    a float32 product there (int32 tensor times a Python float): so here."""
    streaming = random.random() < 0.5
    prefix = []
    for j in feat_lens:
        if random.random() < 0.5:
            prefix.append(0)
            continue
        prefix.append(random.randint(0, int(np.float32(0.3) * np.float32(j))))
    return streaming, prefix


def make_batch(
    idx: list[int], token: list[Any], feat_len: list[int], feat_off: list[int], quantum: int = 1
) -> dict[str, np.ndarray]:
    """Host arrays of one batch: tokens (B, T), token lengths, a gather index (B, 2T) into the
    flat feature table (``-1``: padding), prompt prefixes, and the streaming draw."""
    from voicelab.upstream.engine.batching import padded

    lens = [len(token[i]) for i in idx]
    t = padded(max(lens), quantum)
    tok = np.zeros((len(idx), t), np.int64)
    gather = np.full((len(idx), 2 * t), -1, np.int64)
    flens = []
    for r, i in enumerate(idx):
        tok[r, : lens[r]] = np.asarray(token[i])
        n = feat_len[i]
        gather[r, :n] = np.arange(feat_off[i], feat_off[i] + n)
        flens.append(n)
    streaming, prefix = draw(flens)
    return {
        "token": tok,
        "token_len": np.asarray(lens, np.int64),
        "gather": gather,
        "prefix": np.asarray(prefix, np.int64),
        "streaming": np.asarray(streaming),
    }


def gather_feat(table: Any, gather: Any) -> Any:
    """(B, 2T, 80) features from the flat table (zeros where ``gather`` is -1)."""
    import torch

    keep = gather >= 0
    out = table[gather.clamp(min=0)]
    return torch.where(keep.unsqueeze(-1), out, torch.zeros((), dtype=out.dtype, device=out.device))


def forward(flow: Any, batch: dict[str, Any], streaming: bool) -> dict[str, Any]:
    """{'loss'}: upstream's forward from ``make_batch`` tensors (on the model's device) plus
    ``feat`` (B, 2T, 80) and ``embedding`` (B, 192)."""
    import torch
    import torch.nn.functional as F

    token, token_len, feat = batch["token"], batch["token_len"], batch["feat"]
    t = token.size(1)
    embedding = flow.spk_embed_affine_layer(F.normalize(batch["embedding"], dim=1))
    ar = torch.arange(t, device=token.device)
    mask = (ar.unsqueeze(0) < token_len.unsqueeze(1)).float().unsqueeze(-1)
    x = flow.input_embedding(torch.clamp(token, min=0)) * mask
    h = flow.pre_lookahead_layer(x)
    h = h.repeat_interleave(flow.token_mel_ratio, dim=1)
    mask = mask.repeat_interleave(flow.token_mel_ratio, dim=1).squeeze(dim=-1)
    frames = torch.arange(feat.size(1), device=feat.device)
    keep = (frames.unsqueeze(0) < batch["prefix"].unsqueeze(1)).unsqueeze(-1)
    conds = torch.where(keep, feat, torch.zeros((), dtype=feat.dtype, device=feat.device))
    loss, _ = flow.decoder.compute_loss(
        feat.transpose(1, 2).contiguous(),
        mask.unsqueeze(1),
        h.transpose(1, 2).contiguous(),
        embedding,
        cond=conds.transpose(1, 2),
        streaming=streaming,
    )
    return {"loss": loss}
