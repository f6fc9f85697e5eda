"""Shard the DiT (--dit_fsdp) and the T5 encoder (--t5_fsdp) over the ranks with FSDP2.

Wrapped PER BLOCK, never the whole model as one unit: a unit's parameters are all-gathered
in full on every rank while it runs, so one unit for the 14B DiT would put all 37 GB (bf16) on
every GPU at once — the peak FSDP exists to avoid. Per block the peak is the shards plus the
running block and the prefetched next one (2 × 0.9 GB for the 14B DiT). The parameters left
outside the blocks (embeddings, head; T5's 1 B-parameter token embedding) form the root unit.

Loading never materialises the model: it is built on the meta device, sharded, given empty
storage for this rank's shard only, and every shard is read straight from the checkpoint —
safetensors `get_slice` / a memory-mapped .pth read just this rank's rows. Each rank's host
memory therefore holds at most one tensor's rows at a time, and the file pages come from the
OS page cache that the ranks on one host share. (The alternative, load on rank 0 and scatter,
needs the full 37 GB in rank 0's host memory and sends every byte through one rank.)

torch's FSDP2 (`fully_shard`) works on CPU with gloo and under `torch.no_grad` /
`torch.inference_mode` in torch 2.13, so the CPU tests run the same code as the GPUs.
"""
from __future__ import annotations

import math
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors import safe_open
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from daemon.models.dit import DiTBlock, MultiTalkDiT
from daemon.models.dit_loader import SINGLE_FILE, is_adapter_key, read_dit_config
from daemon.models.loader import (DIT_INDEX, MULTITALK_FILE, WeightsError, download_hint,
                                  load_pth, read_index, safetensors_keys)

# Reads rows [start, stop) of a checkpoint tensor (already cast and placed).
RowReader = Callable[[str, int, int], torch.Tensor]


def world_mesh(device: torch.device) -> DeviceMesh:
    """A 1-D mesh over every rank of the default process group."""
    return DeviceMesh.from_group(dist.group.WORLD, device.type)


def shard_per_block(model: nn.Module, block_type: type[nn.Module], mesh: DeviceMesh) -> nn.Module:
    """fully_shard every `block_type` module, then the root for the remaining parameters.

    Each block prefetches the next block's all-gather while it computes, so gathering overlaps
    the previous block's work instead of stalling the forward.
    """
    blocks = [m for m in model.modules() if isinstance(m, block_type)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no {block_type.__name__} to shard")
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    for block, following in zip(blocks, blocks[1:]):
        block.set_modules_to_forward_prefetch([following])
    return model


def shard_rows(param: torch.Tensor) -> tuple[int, int]:
    """The dim-0 rows [start, stop) this rank holds of a parameter (all rows if not sharded).

    FSDP2's Shard(0) follows torch.chunk: chunks of ceil(rows / ranks), the last ones shorter
    or empty.
    """
    rows = param.shape[0] if param.dim() else 1
    if not isinstance(param, DTensor):
        return 0, rows
    ranks = param.device_mesh.size()
    chunk = math.ceil(rows / ranks)
    start = min(param.device_mesh.get_local_rank() * chunk, rows)
    return start, min(start + chunk, rows)


@torch.no_grad()
def fill_shards(model: nn.Module, read_rows: RowReader, source: Path) -> None:
    """Copy every parameter's local shard from the checkpoint (model already `to_empty`)."""
    for name, param in model.named_parameters():
        local = param.to_local() if isinstance(param, DTensor) else param
        start, stop = shard_rows(param)
        rows = read_rows(name, start, stop)
        if rows.shape != local.shape:
            raise WeightsError(f"{source}: rows {start}:{stop} of {name} have shape "
                               f"{tuple(rows.shape)}, this rank's shard is {tuple(local.shape)} — "
                               f"{download_hint(source)}")
        local.copy_(rows)
    for name, buffer in model.named_buffers():
        # Nothing here would fill them: to_empty left them uninitialised.
        raise WeightsError(f"{type(model).__name__} has buffer {name}, which sharded loading "
                           f"cannot restore")


def build_sharded(build: Callable[[], nn.Module], block_type: type[nn.Module],
                  device: torch.device, mesh: DeviceMesh) -> nn.Module:
    """`build()` on the meta device, sharded per block, with storage for this rank's shards
    only (uninitialised: fill them with `fill_shards`)."""
    with torch.device("meta"):
        model = build()
    model.eval().requires_grad_(False)
    shard_per_block(model, block_type, mesh)
    return model.to_empty(device=device)


# ------------------------------------------------------------------------------------------ DiT

def dit_tensor_files(folder: Path, expected: Iterable[str]) -> dict[str, Path]:
    """The file holding each DiT tensor, for the layouts daemon.models.dit_loader accepts."""
    folder = Path(folder)
    expected = set(expected)
    if (folder / DIT_INDEX).exists() or not (folder / SINGLE_FILE).exists():
        files = {key: folder / name for key, name in read_index(folder).items()}
    else:
        files = dict.fromkeys(safetensors_keys(folder / SINGLE_FILE), folder / SINGLE_FILE)
    unexpected = set(files) - expected
    if unexpected:
        raise WeightsError(f"{folder} holds tensors this model does not have: "
                           f"{', '.join(sorted(unexpected)[:5])} — {download_hint(folder)}")
    # Adapter keys the index does not map come from multitalk.safetensors beside it.
    adapter = sorted(k for k in expected - set(files) if is_adapter_key(k))
    if adapter:
        in_adapter_file = set(safetensors_keys(folder / MULTITALK_FILE))
        files.update((key, folder / MULTITALK_FILE) for key in adapter if key in in_adapter_file)
    missing = expected - set(files)
    if missing:
        raise WeightsError(f"{folder} lacks tensors: {', '.join(sorted(missing)[:5])} — "
                           f"{download_hint(folder / MULTITALK_FILE)}")
    return files


def load_dit_sharded(folder: Path, *, device: torch.device, dtype: torch.dtype, mesh: DeviceMesh,
                     sequence=None) -> MultiTalkDiT:
    """The MultiTalk DiT of `folder`, FSDP-sharded per block over `mesh`, in eval mode.

    `sequence` is the DiT's sequence layout (daemon.parallel.sequence), as for load_dit.
    """
    folder = Path(folder)
    cfg = read_dit_config(folder)
    model = build_sharded(lambda: MultiTalkDiT(cfg, sequence=sequence), DiTBlock, device, mesh)
    files = dit_tensor_files(folder, (name for name, _ in model.named_parameters()))
    with ExitStack() as stack:
        handles = {path: stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
                   for path in sorted(set(files.values()))}

        def read_rows(key: str, start: int, stop: int) -> torch.Tensor:
            tensor = handles[files[key]].get_slice(key)
            rows = tensor[start:stop] if tensor.get_shape() else tensor[:]
            return rows.to(device=device, dtype=dtype)

        fill_shards(model, read_rows, folder)
    return model


# ------------------------------------------------------------------------------------------- T5

def load_t5_sharded(path: Path, *, device: torch.device, dtype: torch.dtype,
                    mesh: DeviceMesh) -> nn.Module:
    """The umt5 encoder of `path` (a .pth), FSDP-sharded per block over `mesh`, in eval mode."""
    # Imported here: the T5 module pulls in the tokenizer's text libraries, which sharding the
    # DiT does not need.
    from daemon.models.t5 import T5Block, T5Config, T5Encoder
    path = Path(path)
    state = load_pth(path)       # memory-mapped: only the rows read below are paged in
    cfg = T5Config.from_state_dict(state, path)
    model = build_sharded(lambda: T5Encoder(cfg), T5Block, device, mesh)
    expected = {name for name, _ in model.named_parameters()}
    if set(state) != expected:
        odd = sorted(set(state) ^ expected)[:5]
        raise WeightsError(f"{path} does not match the umt5 encoder layout ({', '.join(odd)}) — "
                           f"{download_hint(path)}")
    fill_shards(model, lambda key, start, stop: state[key][start:stop].to(device=device, dtype=dtype),
                path)
    return model
