"""Data on the device: index lists in, device batches out (upstream's draws happen here, in
batch order), host-to-device copies without a sync, and the cached datasets loaded by every
rank (rank 0 builds what is missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from voicelab.upstream.engine import data, flow_loss, llm_loss


class Stager:
    """Host-to-device copies without a sync: each batch's int64 arrays go as one copy from a
    pinned slot (a ring; a slot is reused only after its copy's event has passed)."""

    def __init__(self, device: torch.device, slots: int = 4) -> None:
        self.device = device
        self.bufs: list[torch.Tensor | None] = [None] * slots
        self.events: list[Any] = [None] * slots
        self.k = 0

    def put(self, flat: np.ndarray) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.from_numpy(flat)
        k = self.k
        self.k = (k + 1) % len(self.bufs)
        if self.events[k] is not None:
            self.events[k].synchronize()
        buf = self.bufs[k]
        if buf is None or buf.numel() < flat.size:
            buf = torch.empty(max(2 * flat.size, 1 << 16), dtype=torch.int64, pin_memory=True)
            self.bufs[k] = buf
        buf[: flat.size].numpy()[:] = flat
        out = buf[: flat.size].to(self.device, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        self.events[k] = ev
        return out


class Batches:
    """Turns index lists into device batches (upstream's draws happen here, in batch order)."""

    def __init__(
        self,
        ds: data.Dataset,
        kind: str,
        net: Any,
        device: torch.device,
        use_spk: bool,
        quantum: int,
    ) -> None:
        self.ds, self.kind, self.device, self.quantum = ds, kind, device, quantum
        self.row = llm_loss.ROW  # packed row length (tests make it short to fill several rows)
        self.at_least = (0, 0)  # every packed pass at least this (rows, row length): CUDA graphs
        self.stager = Stager(device)
        emb = ds.spk_embedding if use_spk else ds.utt_embedding
        self.embedding = emb.to(device)
        if kind == "llm":
            tok = llm_loss.Tokens.of(net)
            self.pairs = [
                llm_loss.layouts(
                    ds.text[i].numpy(), ds.instruct[i].numpy(), ds.speech[i].numpy(), tok
                )
                for i in range(len(ds))
            ]
        else:
            # The whole feature table on the device: ~57 MB per hour of speech.
            self.feat = ds.feat.to(device)
            self.tokens = [s.numpy() for s in ds.speech]

    def speech_tokens(self, idx: list[int]) -> int:
        return sum(len(self.ds.speech[i]) for i in idx)

    def _upload(self, host: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        flat = np.concatenate([np.asarray(a, np.int64).ravel() for a in host.values()])
        dev = self.stager.put(flat)
        out, at = {}, 0
        for k, a in host.items():
            n = int(np.prod(a.shape))
            t = dev[at : at + n].view(a.shape)
            out[k] = t.bool() if a.dtype == bool else t
            at += n
        return out

    def make_packed(self, group: list[list[int]]) -> dict[str, Any]:
        """The llm batches ``group`` (upstream's draws in batch order) packed for one pass."""
        chosen = [llm_loss.choose([self.pairs[i] for i in idx]) for idx in group]
        return self._upload(llm_loss.make_packed(chosen, self.row, self.at_least))

    def make_fused(
        self, group: list[list[int]], pad_to: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        """The flow batches ``group`` (upstream's draws in batch order) for one pass; ``pad_to``
        (rows, speech tokens): the shape the DiT sees (CUDA graphs)."""
        return {"parts": [self.make(idx) for idx in group], "pad_to": pad_to}

    def make(self, idx: list[int]) -> dict[str, Any]:
        if self.kind == "llm":
            host = llm_loss.make_batch(llm_loss.choose([self.pairs[i] for i in idx]), self.quantum)
            return self._upload(host)
        host = flow_loss.make_batch(
            idx, self.tokens, self.ds.feat_len, self.ds.feat_off, self.quantum
        )
        streaming = bool(host.pop("streaming"))
        host["idx"] = np.asarray(idx, np.int64)
        out = self._upload(host)
        out["streaming"] = streaming
        out["feat"] = flow_loss.gather_feat(self.feat, out.pop("gather"))
        out["embedding"] = self.embedding[out.pop("idx")]
        return out


def load_dataset(
    list_file: Path,
    configs: dict[str, Any],
    config_text: str,
    qwen_dir: Path,
    kind: str,
    rank: int,
    world: int,
) -> data.Dataset:
    """Rank 0 builds missing caches; the others wait, then every rank reads them."""
    files = [Path(x.strip()) for x in list_file.read_text("utf-8").splitlines() if x.strip()]
    if rank == 0:
        shards = [data.load_or_build(f, configs, config_text, qwen_dir, kind) for f in files]
    if world > 1:
        dist.barrier()
    if rank != 0:
        shards = [
            data.load_or_build(f, configs, config_text, qwen_dir, kind, build=False) for f in files
        ]
    return data.concat(shards)
