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


def inputs(flow: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any, Any, Any]:
    """What upstream's forward hands ``decoder.compute_loss``: (x1, mask, mu, spks, cond)."""
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
    x1 = feat.transpose(1, 2).contiguous()
    return x1, mask.unsqueeze(1), h.transpose(1, 2).contiguous(), embedding, conds.transpose(1, 2)


def forward(flow: Any, batch: dict[str, Any], streaming: bool) -> dict[str, Any]:
    """{'loss'}: upstream's forward from ``make_batch`` tensors (on the model's device) plus
    ``feat`` (B, 2T, 80) and ``embedding`` (B, 192); upstream's ``compute_loss`` unchanged."""
    x1, mask, mu, spks, cond = inputs(flow, batch)
    loss, _ = flow.decoder.compute_loss(x1, mask, mu, spks, cond=cond, streaming=streaming)
    return {"loss": loss}


def _draw(dec: Any, x1: Any, mu: Any, spks: Any, cond: Any) -> tuple[Any, ...]:
    """``compute_loss``'s draws and inputs, in its order: (y, u, mu, t, spks, cond)."""
    import torch

    b = mu.shape[0]
    t = torch.rand([b, 1, 1], device=mu.device, dtype=mu.dtype)
    z = torch.randn_like(x1)
    y = (1 - (1 - dec.sigma_min) * t) * z + t * x1
    u = x1 - (1 - dec.sigma_min) * z
    if dec.training_cfg_rate > 0:
        cfg_mask = torch.rand(b, device=x1.device) > dec.training_cfg_rate
        mu = mu * cfg_mask.view(-1, 1, 1)
        spks = spks * cfg_mask.view(-1, 1)
        cond = cond * cfg_mask.view(-1, 1, 1)
    return y, u, mu, t.reshape(b), spks, cond


def attention_mask(est: Any, mask: Any, streaming: Any) -> Any:
    """(B, 1, L, L) boolean: upstream's DiT mask per sample, chunked where ``streaming`` (B,)
    (``static_chunk_size``, every left chunk), else every valid key; a row with no key takes
    all (upstream's rule), without reading anything back to the host."""
    from cosyvoice.utils.mask import subsequent_chunk_mask

    keys = mask.bool()  # (B, 1, L)
    n = keys.size(-1)
    if est.static_chunk_size > 0:
        chunk = subsequent_chunk_mask(n, est.static_chunk_size, -1, keys.device).unsqueeze(0)
        attn = keys & (chunk | ~streaming.view(-1, 1, 1))
    else:
        attn = keys.expand(-1, n, -1)
    attn = attn | ~attn.any(dim=-1, keepdim=True)
    return attn.unsqueeze(1)


def estimate(
    est: Any, x: Any, mask: Any, mu: Any, t: Any, spks: Any, cond: Any, streaming: Any
) -> Any:
    """Upstream's ``DiT.forward`` (its submodules, in its order) with :func:`attention_mask`."""
    import torch

    x, mu, cond = x.transpose(1, 2), mu.transpose(1, 2), cond.transpose(1, 2)
    t = est.time_embed(t)
    x = est.input_embed(x, cond, mu, spks)
    rope = est.rotary_embed.forward_from_seq_len(x.shape[1])
    residual = x
    attn = attention_mask(est, mask, streaming)
    for block in est.transformer_blocks:
        x = block(x, t, mask=attn, rope=rope)
    if est.long_skip_connection is not None:
        x = est.long_skip_connection(torch.cat((x, residual), dim=-1))
    x = est.norm_out(x, t)
    return est.proj_out(x).transpose(1, 2)


def forward_fused(
    flow: Any, batches: list[dict[str, Any]], pad_to: tuple[int, int] | None = None
) -> dict[str, Any]:
    """{'loss'}: the mean of upstream's losses of ``batches`` (each as :func:`forward` computes
    it, draws in upstream's order), from one pass of the DiT over all of them. ``pad_to``
    (rows, speech tokens): the DiT's input padded to that shape (CUDA graphs replay a few
    shapes) with rows that hold no frame, after the draws: the loss and gradients are those
    of the unpadded pass."""
    import torch
    import torch.nn.functional as F

    dec = flow.decoder
    parts, flags = [], []
    for b in batches:
        x1, mask, mu, spks, cond = inputs(flow, b)
        parts.append((*_draw(dec, x1, mu, spks, cond), mask))
        flags.append(torch.full((mu.shape[0],), bool(b["streaming"]), device=mu.device))
    n = max(p[0].shape[-1] for p in parts)
    rows = real = sum(p[0].shape[0] for p in parts)
    if pad_to is not None:
        n = max(n, pad_to[1] * flow.token_mel_ratio)
        rows = max(rows, pad_to[0])

    def cat(i: int) -> Any:
        x = torch.cat([F.pad(p[i], (0, n - p[i].shape[-1])) if p[i].dim() == 3 else p[i]
                       for p in parts])  # fmt: skip
        return F.pad(x, (0, 0) * (x.dim() - 1) + (0, rows - x.shape[0]))

    y, mu, t, spks, cond, mask = cat(0), cat(2), cat(3), cat(4), cat(5), cat(6)
    flags.append(torch.zeros(rows - real, dtype=torch.bool, device=mu.device))
    streaming = torch.cat(flags)
    pred = estimate(dec.estimator, y, mask, mu, t, spks, cond, streaming)
    losses, at = [], 0
    for y_k, u_k, *_, m_k in parts:
        b, _, tk = y_k.shape
        p_k = pred[at : at + b, :, :tk]
        at += b
        sse = F.mse_loss(p_k * m_k, u_k * m_k, reduction="sum")
        losses.append(sse / (m_k.sum() * u_k.shape[1]))
    return {"loss": torch.stack(losses).mean()}
