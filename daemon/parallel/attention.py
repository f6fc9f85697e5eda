"""Self-attention over a token sequence split across ranks (sequence parallelism).

Ulysses: every rank holds a slice of the tokens with all heads; one all-to-all turns that into
all tokens for 1/W of the heads, each rank runs ordinary attention on its heads, and a second
all-to-all turns the result back into its token slice. Attention is per head, so the result is
the single-GPU result (same keys for every query; only the summation order inside the kernel
may differ).

Why not xfuser's `xFuserLongContextAttention` (or yunchang's `UlyssesAttention`) for Ulysses:
their all-to-all needs equal token slices, so a sequence that does not divide by the ranks must
be padded, and the padded tokens then take part in every softmax as keys — the output is no
longer the single-GPU output, and their kernels take no key mask. The all-to-all here takes
slices that differ by one token (torch's `all_to_all_single` with split sizes), so nothing is
ever padded and the result is exact for any token count. Ring attention (--ring_size > 1, CUDA
only) does use `xFuserLongContextAttention`: ring passes key/value blocks between ranks, which
needs equal slices, so a ring layout requires tokens divisible by the ranks.

Layout everywhere is [B, L, H, D], as daemon.models.attention.attention.
"""
from __future__ import annotations

import enum
import importlib.util
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from daemon.models.attention import attention as sdpa_attention
from daemon.parallel.groups import SequenceGroup


class AttentionKernel(enum.Enum):
    """The kernel that runs each rank's attention (chosen explicitly, never by a library default)."""
    SDPA = "sdpa"                  # torch's own dispatch: exactly the single-GPU function
    SDPA_CUDNN = "sdpa_cudnn"      # torch SDPA, cuDNN first: fastest measured on H200 (ECOSYSTEM.md)
    SDPA_FLASH = "sdpa_flash"      # torch SDPA, its built-in FlashAttention-2 first
    FLASH_ATTN = "flash_attn"      # the flash-attn package (FA2)
    FLASH_ATTN3 = "flash_attn3"    # flash_attn_interface (FA3, Hopper only)


# Priority lists for torch's SDPA dispatcher; later entries are fallbacks for shapes or dtypes
# the preferred kernel refuses (cuDNN takes only 16-bit inputs, for one).
_SDPA_PRIORITY = {
    AttentionKernel.SDPA_CUDNN: ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
    AttentionKernel.SDPA_FLASH: ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
}

# The yunchang kernel matching ours, for the ring path. TORCH_EFFICIENT is never used: its
# log-sum-exp update fails in yunchang's ring (ECOSYSTEM.md).
_RING_ATTN_TYPE = {
    AttentionKernel.SDPA: "TORCH_FLASH",
    AttentionKernel.SDPA_CUDNN: "TORCH_CUDNN",
    AttentionKernel.SDPA_FLASH: "TORCH_FLASH",
    AttentionKernel.FLASH_ATTN: "FA",
    AttentionKernel.FLASH_ATTN3: "FA3",
}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def choose_kernel(device: torch.device, dtype: torch.dtype) -> AttentionKernel:
    """The fastest kernel known for this device and dtype.

    Hopper (sm90): FA3 when installed, else torch's cuDNN attention (Ulysses-2 on 2×H200 at
    75,600 tokens: cuDNN 0.112 s vs torch-flash 0.170 s per rank). Other GPUs: flash-attn when
    installed. CPU and float32: torch's own dispatch (the 16-bit kernels do not apply).
    """
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return AttentionKernel.SDPA
    if torch.cuda.get_device_capability(device)[0] == 9:
        return AttentionKernel.FLASH_ATTN3 if _installed("flash_attn_interface") else AttentionKernel.SDPA_CUDNN
    return AttentionKernel.FLASH_ATTN if _installed("flash_attn") else AttentionKernel.SDPA


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
                    kernel: AttentionKernel) -> torch.Tensor:
    """softmax(q·kᵀ·scale)·v on this rank, [B, L, H, D] in and out, with `kernel`."""
    if kernel is AttentionKernel.SDPA:
        return sdpa_attention(q, k, v, scale=scale)
    if kernel is AttentionKernel.FLASH_ATTN:
        from flash_attn import flash_attn_func
        return flash_attn_func(q, k, v, softmax_scale=scale)
    if kernel is AttentionKernel.FLASH_ATTN3:
        from flash_attn_interface import flash_attn_func
        out = flash_attn_func(q, k, v, softmax_scale=scale)
        return out[0] if isinstance(out, tuple) else out     # some FA3 releases also return lse
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backends = [getattr(SDPBackend, name) for name in _SDPA_PRIORITY[kernel]]
    with sdpa_kernel(backends, set_priority=True):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             scale=scale)
    return out.transpose(1, 2)


def heads_to_tokens(x: torch.Tensor, group: dist.ProcessGroup, counts: Sequence[int]) -> torch.Tensor:
    """[B, n_r, H, D] (my tokens, all heads) → [B, L, H/W, D] (all tokens, my heads).

    counts[j] = tokens of rank j, in token order; ranks may hold different counts.
    """
    world = len(counts)
    batch, mine, heads, dim = x.shape
    # [W, n_r, B, H/W, D]: block j goes to rank j (its heads), rows = my tokens
    send = x.reshape(batch, mine, world, heads // world, dim).permute(2, 1, 0, 3, 4).contiguous()
    recv = x.new_empty(sum(counts), batch, heads // world, dim)
    dist.all_to_all_single(recv, send.view(world * mine, batch, heads // world, dim),
                           output_split_sizes=list(counts), input_split_sizes=[mine] * world,
                           group=group)
    return recv.permute(1, 0, 2, 3)                                   # [B, L, H/W, D]


def tokens_to_heads(x: torch.Tensor, group: dist.ProcessGroup, counts: Sequence[int],
                    rank: int) -> torch.Tensor:
    """Inverse of `heads_to_tokens`: [B, L, H/W, D] → [B, n_r, H, D]."""
    world = len(counts)
    batch, _, part, dim = x.shape
    mine = counts[rank]
    send = x.permute(1, 0, 2, 3).contiguous()                        # [L, B, H/W, D], rank j's rows in order
    recv = x.new_empty(world * mine, batch, part, dim)               # from rank j: my tokens, its heads
    dist.all_to_all_single(recv, send, output_split_sizes=[mine] * world,
                           input_split_sizes=list(counts), group=group)
    return recv.view(world, mine, batch, part, dim).permute(2, 1, 0, 3, 4).reshape(
        batch, mine, world * part, dim)


class SequenceParallelAttention:
    """Drop-in for daemon.models.attention.attention over a token sequence split across ranks.

    `attn(q, k, v, scale=None)`: q, k, v [B, n_r, H, D] are this rank's tokens (all heads);
    returns [B, n_r, H, D], equal to full-sequence attention restricted to these queries.
    `counts` are every rank's token counts (the split of `daemon.parallel.sequence`).
    """

    def __init__(self, group: SequenceGroup, counts: Sequence[int], kernel: AttentionKernel,
                 ring: "RingAttention | None" = None):
        if len(counts) != group.size:
            raise ValueError(f"{len(counts)} token counts for {group.size} ranks")
        if group.ring > 1 and (ring is None or len(set(counts)) != 1):
            raise ValueError("ring attention needs a RingAttention and equal token slices")
        self.group = group
        self.counts = tuple(counts)
        self.kernel = kernel
        self.ring = ring

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 scale: float | None = None) -> torch.Tensor:
        if self.ring is not None:
            return self.ring(q, k, v, scale)
        heads = q.shape[2]
        if heads % self.group.size:
            raise ValueError(f"{heads} heads do not split over {self.group.size} Ulysses ranks")
        batch = q.shape[0]
        # One all-to-all for q, k and v together (stacked on the batch axis): one latency, not three.
        qkv = heads_to_tokens(torch.cat([q, k, v]), self.group.ulysses_group, self.counts)
        out = local_attention(qkv[:batch], qkv[batch:2 * batch], qkv[2 * batch:], scale, self.kernel)
        return tokens_to_heads(out, self.group.ulysses_group, self.counts, self.group.rank)


class RingAttention:
    """xfuser's Ulysses × ring attention (GPU only), for layouts with --ring_size > 1."""

    def __init__(self, kernel: AttentionKernel):
        from xfuser.core.long_ctx_attention import AttnType, xFuserLongContextAttention
        self.impl = xFuserLongContextAttention(ring_impl_type="basic",
                                               attn_type=getattr(AttnType, _RING_ATTN_TYPE[kernel]))

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 scale: float | None) -> torch.Tensor:
        return self.impl(None, q, k, v, softmax_scale=scale)
