"""Which tokens of one DiT forward a rank holds, and the few collectives the DiT needs for them.

The DiT is built with a sequence layout (`WholeSequence` on one device, `SequenceParallel` on
several ranks). At the start of each forward it asks the layout for a `TokenShard` — this
rank's contiguous slice of the (f, h, w) row-major token sequence — and routes every
cross-token operation through it:

    split / gather        the token slice out of the full sequence, and back (after the head)
    attention             self-attention over ALL tokens for this slice's queries (Ulysses)
    leading_tokens        the first frame's keys, on every rank (L-RoPE reference map)
    extrema               min / max over all tokens (L-RoPE position normalisation)
    frames                which latent frames the slice touches (per-frame audio attention)

Everything else in a block is per token and runs on the slice alone: projections, norms,
RoPE (the slice's rows of the table), text/image cross-attention (full context on every rank),
the audio cross-attention (the slice's frames' audio tokens) and the FFN.

The split is the official one (`split_token_counts_and_frame_ids` in MultiTalk): W slices whose
sizes differ by at most one token, the larger first; slices may start and end inside a frame.
Nothing is padded, so a forward on W ranks computes the one-rank result.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from daemon.models.attention import attention as sdpa_attention
from daemon.parallel.attention import (AttentionKernel, RingAttention,
                                       SequenceParallelAttention, choose_kernel)
from daemon.parallel.groups import SequenceGroup


def balanced_counts(total: int, parts: int) -> tuple[int, ...]:
    """`parts` sizes summing to `total`, differing by at most one, the larger first."""
    if total < parts:
        raise ValueError(f"{total} tokens cannot be split over {parts} ranks")
    return tuple(total // parts + (1 if i < total % parts else 0) for i in range(parts))


@dataclass(frozen=True)
class FrameWindow:
    """The latent frames a token slice touches: frames first … first+count−1, of which the
    first `lead` tokens of the first frame and the last `tail` tokens of the last frame belong
    to other slices."""
    first: int
    count: int
    lead: int
    tail: int


@dataclass(frozen=True)
class TokenShard:
    """Tokens [start, stop) of a forward's `total` tokens, `frame_tokens` per latent frame.

    This base class is the one-device case (the whole sequence): every operation is local.
    """
    total: int
    frame_tokens: int
    start: int
    stop: int

    def __post_init__(self):
        if not 0 <= self.start < self.stop <= self.total:
            raise ValueError(f"tokens [{self.start}, {self.stop}) are not a slice of {self.total}")
        if self.total % self.frame_tokens:
            raise ValueError(f"{self.total} tokens are not whole frames of {self.frame_tokens}")

    @property
    def count(self) -> int:
        return self.stop - self.start

    def frames(self) -> FrameWindow:
        first = self.start // self.frame_tokens
        last = (self.stop - 1) // self.frame_tokens
        return FrameWindow(first=first, count=last - first + 1,
                           lead=self.start - first * self.frame_tokens,
                           tail=(last + 1) * self.frame_tokens - self.stop)

    def split(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This slice of a full-sequence tensor (token axis `dim`)."""
        return x.narrow(dim, self.start, self.count)

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The full sequence from every rank's slice."""
        return x

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  scale: float | None = None) -> torch.Tensor:
        """Self-attention of this slice's queries over all tokens; [B, n, H, D] in and out."""
        return sdpa_attention(q, k, v, scale=scale)

    def leading_tokens(self, x: torch.Tensor, count: int) -> torch.Tensor:
        """The first `count` tokens of the full sequence, [B, count, ...], from this slice's x."""
        return x[:, :count]

    def extrema(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(min, max) over all tokens of x [..., n] (last axis = this slice's tokens), keepdim."""
        return x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)


@dataclass(frozen=True)
class SequenceShard(TokenShard):
    """One rank's slice when the sequence is split over an SP group."""
    group: SequenceGroup | None = None
    counts: tuple[int, ...] = ()
    self_attention: SequenceParallelAttention | None = field(default=None, repr=False)

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        # all_gather wants equal sizes: slices differ by at most one token, so pad to the
        # largest and cut each piece back to its own count.
        longest = self.counts[0]
        pad = [0, 0] * (x.dim() - 1 - dim) + [0, longest - self.count]
        padded = torch.nn.functional.pad(x, pad).contiguous()
        pieces = [torch.empty_like(padded) for _ in self.counts]
        dist.all_gather(pieces, padded, group=self.group.group)
        return torch.cat([p.narrow(dim, 0, n) for p, n in zip(pieces, self.counts)], dim=dim)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  scale: float | None = None) -> torch.Tensor:
        return self.self_attention(q, k, v, scale)

    def leading_tokens(self, x: torch.Tensor, count: int) -> torch.Tensor:
        # The ranks whose slices overlap tokens [0, count) each broadcast their part; with at
        # least as many frames as ranks that is rank 0 alone (one broadcast of count tokens).
        parts, begin = [], 0
        for rank, n in enumerate(self.counts):
            if begin >= count:
                break
            size = min(n, count - begin)
            part = (x[:, :size].contiguous() if rank == self.group.rank
                    else x.new_empty(x.shape[0], size, *x.shape[2:]))
            dist.broadcast(part, group=self.group.group, group_src=rank)
            parts.append(part)
            begin += n
        return torch.cat(parts, dim=1)

    def extrema(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = super().extrema(x)
        both = torch.cat([high, -low], dim=-1)        # min = −max(−x): one all-reduce for both
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self.group.group)
        return -both[..., 1:], both[..., :1]


class WholeSequence:
    """The sequence layout of a one-device DiT: every rank-free operation is local."""

    def shard(self, total: int, frame_tokens: int) -> TokenShard:
        return TokenShard(total=total, frame_tokens=frame_tokens, start=0, stop=total)


class SequenceParallel:
    """The sequence layout handed to the DiT when it runs on an SP group of several ranks."""

    def __init__(self, group: SequenceGroup, kernel: AttentionKernel):
        self.group = group
        self.kernel = kernel
        # Built on first use (GPU only): xfuser's class reads yunchang's global ring groups.
        self._ring: RingAttention | None = None

    def shard(self, total: int, frame_tokens: int) -> TokenShard:
        counts = balanced_counts(total, self.group.size)
        if self.group.ring > 1:
            if len(set(counts)) != 1:
                raise ValueError(
                    f"ring attention needs the {total} tokens to divide by the {self.group.size} "
                    f"ranks; use --ulysses_size {self.group.size} --ring_size 1 (Ulysses takes any count)")
            if self._ring is None:
                self._ring = RingAttention(self.kernel)
        start = sum(counts[:self.group.rank])
        attention = SequenceParallelAttention(self.group, counts, self.kernel, self._ring)
        return SequenceShard(total=total, frame_tokens=frame_tokens, start=start,
                             stop=start + counts[self.group.rank], group=self.group,
                             counts=counts, self_attention=attention)


def sequence_layout(group: SequenceGroup, device: torch.device,
                    dtype: torch.dtype) -> WholeSequence | SequenceParallel:
    """The DiT's layout for this rank's SP group: the whole sequence when the group is one
    rank, else split over it with the fastest attention kernel for `device` and `dtype`."""
    if group.size == 1:
        return WholeSequence()
    return SequenceParallel(group, choose_kernel(device, dtype))
