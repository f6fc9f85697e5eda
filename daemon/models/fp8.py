"""FP8 (e4m3) GEMMs for the DiT's token-wide linears on GPUs with FP8 tensor cores (sm 8.9+).

Opt-in (`--fp8`): it changes the output. Each weight is stored in float8 e4m3 with one float32
scale per output channel (half the bytes of bf16); each activation row is scaled by its own
absolute maximum and cast to e4m3 on the fly; `torch._scaled_mm` multiplies with float32
accumulation and returns the activations' dtype. Measured on an H100 at 960² token counts
(bench/kernel_bench.py): the GEMMs run ~1.4× faster counting the activation quantisation, with
~4% relative error per product on random data (bf16: 0.17%).

Only the linears whose inputs are the video tokens are converted (self-attention q k v o,
cross-attention q o, audio q and proj, the FFN): they hold the GEMM time. The text, image and
audio context projections (a few hundred rows) and the embeddings/head stay in bf16.
"""
from __future__ import annotations

import torch
import torch.nn as nn

E4M3_MAX = 448.0   # largest finite float8_e4m3fn


def fp8_supported(device: torch.device) -> bool:
    """Whether `device` has FP8 tensor cores (Ada sm 8.9, Hopper sm 9.0 and later)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] → (e4m3 [M, K], float32 scale [M, 1]) with x ≈ e4m3 · scale, one scale per row."""
    scale = x.abs().amax(-1, keepdim=True).float().clamp_min(1e-12) / E4M3_MAX
    return (x / scale).to(torch.float8_e4m3fn), scale


class FP8Linear(nn.Module):
    """A bf16/fp16 nn.Linear with its weight held in e4m3 (per-output-channel scale)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.in_features % 16 or linear.out_features % 16:
            raise ValueError(f"FP8 GEMMs need both sizes divisible by 16, got "
                             f"{linear.in_features}→{linear.out_features}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_rows(linear.weight.detach())
        # Parameters (frozen), not buffers: offload and weight streaming move parameters.
        self.weight = nn.Parameter(weight, requires_grad=False)                       # [out, in] e4m3
        self.weight_scale = nn.Parameter(scale.t().contiguous(), requires_grad=False)  # [1, out] f32
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        x8, x_scale = quantize_rows(rows)
        y = torch._scaled_mm(x8, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale,
                             out_dtype=x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3"


# The token-wide linears of one DiT block, by attribute path.
TOKEN_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                 "cross_attn.q", "cross_attn.o",
                 "audio_cross_attn.q_linear", "audio_cross_attn.proj",
                 "ffn.0", "ffn.2")


def convert_blocks_to_fp8(blocks: nn.ModuleList) -> int:
    """Replace every block's token-wide linears by FP8Linear in place; returns how many."""
    converted = 0
    for block in blocks:
        for path in TOKEN_LINEARS:
            parent_path, _, name = path.rpartition(".")
            parent = block.get_submodule(parent_path)
            setattr(parent, name, FP8Linear(getattr(parent, name)))   # "0" names a Sequential's item
            converted += 1
    return converted
