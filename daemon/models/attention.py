"""The one attention function every model in daemon/models calls.

Layout is [B, L, H, D] (batch, tokens, heads, head dim) — the layout of the official Wan code
and of flash-attn — so callers never transpose. Today this is torch SDPA; a flash-attn or FP8
kernel goes here, behind the same signature, when it is measured to be faster.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              scale: float | None = None) -> torch.Tensor:
    """softmax(q·kᵀ·scale)·v over all keys (no mask, no dropout).

    q [B, Lq, H, D], k [B, Lk, H, D], v [B, Lk, H, Dv] → [B, Lq, H, Dv]; scale defaults to 1/√D.
    Dv may differ from D (the speaker-routing map uses the person masks as values).
    """
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)  # [B, H, Lq, Dv]
    return out.transpose(1, 2)
