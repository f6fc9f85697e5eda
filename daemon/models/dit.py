"""MultiTalk's DiT: Wan2.1-I2V-14B with the MultiTalk audio adapter.

Written from the facts in shared/docs/MODEL.md and shared/fixtures/README.md and proven equal
to the official implementation by `python -m daemon.models.check`. Parameter names are exactly
those of the official state_dict, so the released files load with `load_state_dict(strict=True)`.

One forward, top to bottom:
  tokens   cat(noisy latent 16, mask 4 + VAE condition 16) → Conv3d patch (1,2,2) → [B, L, D]
  time     sinusoid(t) → time_embedding → e [B, D]; time_projection → e0 [B, 6, D] (float32)
  context  T5 text (zero-padded to text_len) → text_embedding; CLIP → img_emb
  audio    wav2vec2 windows → audio_proj → [B, F, speakers·K, A] (K tokens per speaker per frame)
  blocks   adaLN(e0) self-attention with 3-D RoPE → text+image cross-attention →
           audio cross-attention per latent frame (L-RoPE routing for two speakers) → adaLN FFN;
           or, when a TeaCache decides so, the blocks' residual of an earlier step added instead
  head     adaLN(e) → Linear → unpatchify → [B, 16, F, H, W] (float32)

Precision follows the official code: the residual stream, attention and projections run in the
weights' dtype; the time embedding, the adaLN modulation arithmetic and the head run in float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from daemon.models.attention import attention
from daemon.models.audio_proj import AudioProjModel, split_latent_windows
from daemon.parallel.sequence import TokenShard, WholeSequence


@dataclass(frozen=True)
class DiTConfig:
    # Sizes of the real multitalk-14B; `dit_loader.read_dit_config` fills them from config.json.
    dim: int = 5120
    ffn_dim: int = 13824
    freq_dim: int = 256
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 36                 # 16 noise + 4 frame mask + 16 VAE condition
    out_dim: int = 16
    text_len: int = 512
    eps: float = 1e-6
    # Always these values: the official loader ignores them in config.json (ignore_for_config),
    # and qk_norm / cross_attn_norm are on in every released checkpoint.
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    # CLIP ViT-H/14 image tokens: 1 class + 256 patches of 1280 channels.
    clip_dim: int = 1280
    # Audio adapter (defaults apply when the plain Wan2.1 config.json lacks them).
    audio_window: int = 5
    intermediate_dim: int = 512
    output_dim: int = 768
    context_tokens: int = 32
    vae_scale: int = 4               # video frames per latent frame (VAE temporal stride)
    norm_input_visual: bool = True
    norm_output_audio: bool = True
    # L-RoPE: person 1 positions in [0, interval], person 2 in [range−interval, range],
    # background at range/2 (official class_range 24, class_interval 4).
    class_range: int = 24
    class_interval: int = 4
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def __post_init__(self):
        if self.dim % self.num_heads or self.head_dim % 2:
            raise ValueError(f"dim {self.dim} must split into {self.num_heads} heads of even size")


# ---------------------------------------------------------------------------------------------
# Positional encodings

def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t [B] timestep values → [B, dim] float64, [cos | sin] (cos first, as the official)."""
    half = dim // 2
    t = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_frequencies(dim: int, theta: float, device) -> torch.Tensor:
    """[dim/2] float64: θ^(−2i/dim) for the channel pairs (2i, 2i+1)."""
    return torch.pow(theta, -torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)


def rope_3d(grid: tuple[int, int, int], head_dim: int, theta: float, device,
            dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [L, 1, head_dim/2] for tokens in (f, h, w) row-major order.

    The head dim is split [d−4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋] channels over (f, h, w), each part with its
    own frequencies. Angles are computed in float64 on the small per-axis tables and rounded once
    to `dtype`, so the per-token tables and their use stay in the compute dtype.
    """
    pairs = head_dim // 2
    split = [pairs - 2 * (pairs // 3), pairs // 3, pairs // 3]
    cos_parts, sin_parts = [], []
    for axis, (size, part) in enumerate(zip(grid, split)):
        angles = torch.outer(torch.arange(size, dtype=torch.float64, device=device),
                             rope_frequencies(2 * part, theta, device))     # [size, part]
        shape = [1, 1, 1, part]
        shape[axis] = size
        cos_parts.append(torch.cos(angles).to(dtype).view(shape).expand(*grid, part))
        sin_parts.append(torch.sin(angles).to(dtype).view(shape).expand(*grid, part))
    cos = torch.cat(cos_parts, dim=-1).reshape(-1, 1, pairs)
    sin = torch.cat(sin_parts, dim=-1).reshape(-1, 1, pairs)
    return cos, sin


@torch.library.custom_op("duet::cos_sin", mutates_args=())
def cos_sin(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of `angles`, as one op torch.compile cannot see into: fused into the rotation
    that reads them, they were recomputed for every head (audio RoPE: 5.1 ms per block at 960²
    on an H100, against ~0.1 ms computed once per token)."""
    return torch.cos(angles), torch.sin(angles)


@cos_sin.register_fake
def _cos_sin_shapes(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(angles), torch.empty_like(angles)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on channel pairs (2i, 2i+1) = (real, imag): x [..., D], cos/sin broadcast to [..., D/2]."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


# ---------------------------------------------------------------------------------------------
# Norms and float32 helpers

class RMSNorm(nn.Module):
    """x·rsqrt(mean(x²)+eps)·weight over the last dim, the norm computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = at_least_fp32(x)
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNormFP32(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (official WanLayerNorm)."""

    def __init__(self, dim: int, eps: float, affine: bool):
        super().__init__(dim, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else at_least_fp32(self.weight)
        bias = None if self.bias is None else at_least_fp32(self.bias)
        return F.layer_norm(at_least_fp32(x), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or kept in float64 (a float64 run stays a float64 reference throughout)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` in (at least) float32 whatever the weights' dtype (official autocast(float32) regions)."""
    return F.linear(at_least_fp32(x), at_least_fp32(layer.weight), at_least_fp32(layer.bias))


# ---------------------------------------------------------------------------------------------
# Embeddings

class TimeEmbedding(nn.Sequential):
    """t [B] → e [B, D] float32: sinusoid(freq_dim) → Linear → SiLU → Linear."""

    def __init__(self, freq_dim: int, dim: int):
        super().__init__(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.freq_dim = freq_dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = sinusoidal_embedding(t, self.freq_dim).to(at_least_fp32(self[0].weight).dtype)
        return linear_fp32(self[2], F.silu(linear_fp32(self[0], x)))


class TimeProjection(nn.Sequential):
    """e [B, D] → e0 [B, 6, D] float32: the six adaLN vectors every block adds its own table to."""

    def __init__(self, dim: int):
        super().__init__(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return linear_fp32(self[1], F.silu(e)).unflatten(1, (6, -1))


class MLPProj(nn.Module):
    """CLIP tokens [B, 257, 1280] → [B, 257, D]: LN – Linear – GELU(erf) – Linear – LN (eps 1e-5)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(),
                                  nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))

    def forward(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(clip_tokens)


# ---------------------------------------------------------------------------------------------
# Attention layers

VALUE_WIDTH = 64


def reference_attention_map(q: torch.Tensor, k: torch.Tensor, person_masks: torch.Tensor) -> torch.Tensor:
    """How strongly each video token attends to each person's region of the first latent frame.

    q, k [B, L, N, d] (self-attention, after RoPE); person_masks [C, S] 0/1 over the S tokens of
    latent frame 0 (classes person 1, person 2, background) → map [B, C, L]:
        map_c = mean over heads of Σ_keys softmax(q·k/√d) · mask_c / Σ mask_c.
    That is attention(q, k_ref, V = normalised masks): one fused attention call, never the
    [heads, L, S] probability tensor the official code materialises. The official code averages
    two groups of ⌊N/2⌋ heads; equal groups make that the mean over the first 2⌊N/2⌋ heads (an
    odd last head is ignored, as there).
    """
    classes, ref_tokens = person_masks.shape
    heads = 2 * (q.shape[2] // 2)
    # An empty mask would divide 0 by 0 (NaN in the official code); it gives a zero row here.
    values = person_masks / person_masks.sum(-1, keepdim=True).clamp_min(1)    # [C, S]
    # Values padded to 64 columns: the widest the GPU's cuDNN kernel takes at no cost, and its
    # fastest (H100, 960²: 7.7 ms per block against 8.6 at width 8; bench/kernel_bench.py).
    values = F.pad(values.t(), (0, VALUE_WIDTH - classes))                    # [S, 64]
    values = values.to(q.dtype)[None, :, None, :].expand(q.shape[0], ref_tokens, heads, -1)
    out = attention(q[:, :, :heads], k[:, :ref_tokens, :heads], values)        # [B, L, heads, 64]
    return at_least_fp32(out[..., :classes]).mean(2).transpose(1, 2)                # [B, C, L]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)   # over the full dim, before the split into heads
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                person_masks: torch.Tensor | None,
                shard: TokenShard) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, L, D] → (y [B, L, D], reference map [B, 3, L] or None when person_masks is None).

        L is this rank's slice of the tokens (`shard`; the whole sequence on one device).
        """
        b, n = x.shape[0], x.shape[1]
        q = rotate_pairs(self.norm_q(self.q(x)).view(b, n, self.num_heads, -1), *rope)  # [B, L, N, d]
        k = rotate_pairs(self.norm_k(self.k(x)).view(b, n, self.num_heads, -1), *rope)
        v = self.v(x).view(b, n, self.num_heads, -1)
        y = self.o(shard.attention(q, k, v).flatten(2))
        ref_map = None
        if person_masks is not None:
            ref_keys = shard.leading_tokens(k, person_masks.shape[1])    # latent frame 0, every rank
            ref_map = reference_attention_map(q, ref_keys, person_masks)
        return y, ref_map


class TextImageCrossAttention(nn.Module):
    """Video tokens attend to the text and to the CLIP image tokens; shared q and o."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.norm_k_img = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, context_img: torch.Tensor,
                context_text: torch.Tensor) -> torch.Tensor:
        """x [B, L, D], context_img [B, 257, D], context_text [B, text_len, D] → [B, L, D]."""
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1))   # [B, *, D] → [B, *, N, d]
        q = heads(self.norm_q(self.q(x)))
        text = attention(q, heads(self.norm_k(self.k(context_text))), heads(self.v(context_text)))
        image = attention(q, heads(self.norm_k_img(self.k_img(context_img))), heads(self.v_img(context_img)))
        return self.o((text + image).flatten(2))


class AudioCrossAttention(nn.Module):
    """Per latent frame, the frame's video tokens attend to that frame's audio tokens.

    Two speakers (L-RoPE): each video token gets a 1-D RoPE position from the block's reference
    map — person 1 in [0, 4], person 2 in [20, 24], background 12 — and the audio tokens sit at
    2 (person 1, first half) and 22 (person 2, second half), so a face attends mostly to its own
    speaker's audio. One speaker: no RoPE.
    """

    def __init__(self, dim: int, audio_dim: int, num_heads: int, class_range: int,
                 class_interval: int, theta: float):
        super().__init__()
        self.num_heads = num_heads
        self.theta = theta
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(audio_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.person1_range = (0.0, float(class_interval))
        self.person2_range = (float(class_range - class_interval), float(class_range))
        self.background_position = float(class_range // 2)

    def forward(self, x: torch.Tensor, audio_tokens: torch.Tensor,
                ref_map: torch.Tensor | None, shard: TokenShard) -> torch.Tensor:
        """x [B, L, D], audio_tokens [B, F, M, A], ref_map [B, 3, L] (two speakers) → [B, L, D].

        L is this rank's slice of the tokens (`shard`); under sequence parallelism it may start
        and end inside a frame, so it is padded to whole frames here and cut back after.
        """
        b, n, dim = x.shape
        window = shard.frames()
        audio_tokens = audio_tokens[:, window.first:window.first + window.count]
        frames, per_frame_audio = window.count, audio_tokens.shape[2]
        q = pad_tokens(self.q_linear(x), window.lead, window.tail).view(
            b * frames, shard.frame_tokens, self.num_heads, -1)                      # [B·F, S, N, d]
        k, v = self.kv_linear(audio_tokens).view(
            b * frames, per_frame_audio, 2, self.num_heads, -1).unbind(2)             # [B·F, M, N, d]
        if ref_map is not None:
            q_pos = pad_tokens(self.token_positions(ref_map, shard), window.lead,
                               window.tail).view(b * frames, -1)                      # [B·F, S]
            k_pos = torch.full((per_frame_audio,), sum(self.person2_range) / 2, device=x.device)
            k_pos[:per_frame_audio // 2] = sum(self.person1_range) / 2
            q = rotate_pairs(q, *self.rope_1d(q_pos, q.shape[-1], q.dtype))
            k = rotate_pairs(k, *self.rope_1d(k_pos, k.shape[-1], k.dtype))
        y = attention(q, k, v).reshape(b, frames * shard.frame_tokens, dim)           # [B, F·S, D]
        return self.proj(y[:, window.lead:window.lead + n])

    def token_positions(self, ref_map: torch.Tensor, shard: TokenShard) -> torch.Tensor:
        """[B, 3, L] map → [B, L] positions: each token takes its strongest class's position."""
        ref_map = at_least_fp32(ref_map)
        low, high = shard.extrema(ref_map)                 # over ALL tokens, not just this slice
        scaled = (ref_map - low) / (high - low + 1e-8)     # each class min–max normalised over tokens
        (lo1, hi1), (lo2, hi2) = self.person1_range, self.person2_range
        candidates = torch.stack([scaled[:, 0] * (hi1 - lo1) + lo1,
                                  scaled[:, 1] * (hi2 - lo2) + lo2,
                                  torch.full_like(scaled[:, 2], self.background_position)], dim=1)  # [B, 3, L]
        return candidates.gather(1, ref_map.argmax(1, keepdim=True)).squeeze(1)

    def rope_1d(self, positions: torch.Tensor, head_dim: int,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [..., tokens, 1, head_dim/2] for fractional positions (angles in float32)."""
        freqs = rope_frequencies(head_dim, self.theta, positions.device).to(positions.dtype)
        cos, sin = cos_sin(positions[..., None, None] * freqs)              # [..., T, 1, d/2]
        return cos.to(dtype), sin.to(dtype)


# ---------------------------------------------------------------------------------------------
# Block and head

def pad_tokens(x: torch.Tensor, lead: int, tail: int) -> torch.Tensor:
    """x [B, L, ...] with `lead` zero tokens before and `tail` after (x itself when none)."""
    if not lead and not tail:
        return x
    return torch.cat([x.new_zeros(x.shape[0], lead, *x.shape[2:]), x,
                      x.new_zeros(x.shape[0], tail, *x.shape[2:])], dim=1)


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = LayerNormFP32(dim, cfg.eps, affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = LayerNormFP32(dim, cfg.eps, affine=True)
        self.cross_attn = TextImageCrossAttention(dim, cfg.num_heads, cfg.eps)
        self.norm_x = LayerNormFP32(dim, cfg.eps, affine=True) if cfg.norm_input_visual else nn.Identity()
        self.audio_cross_attn = AudioCrossAttention(dim, cfg.output_dim, cfg.num_heads, cfg.class_range,
                                                    cfg.class_interval, cfg.rope_theta)
        self.norm2 = LayerNormFP32(dim, cfg.eps, affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                context_img: torch.Tensor, context_text: torch.Tensor, audio_tokens: torch.Tensor,
                person_masks: torch.Tensor | None, shard: TokenShard) -> torch.Tensor:
        """x [B, L, D] in the weights' dtype (this rank's tokens), e0 [B, 6, D] float32 → [B, L, D]."""
        dtype = x.dtype
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.to(e0.dtype) + e0).chunk(6, dim=1)

        y, ref_map = self.self_attn((self.norm1(x).to(e0.dtype) * (1 + scale1) + shift1).to(dtype),
                                    rope, person_masks, shard)
        x = (x + y * gate1).to(dtype)
        x = x + self.cross_attn(self.norm3(x), context_img, context_text)       # no gate
        x = x + self.audio_cross_attn(self.norm_x(x), audio_tokens, ref_map, shard)   # no gate
        y = self.ffn((self.norm2(x).to(e0.dtype) * (1 + scale2) + shift2).to(dtype))
        return (x + y * gate2).to(dtype)


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = LayerNormFP32(cfg.dim, cfg.eps, affine=False)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, L, D], e [B, D] float32 (the time embedding, not e0) → [B, L, prod(patch)·out] float32."""
        shift, scale = (self.modulation.to(e.dtype) + e[:, None]).chunk(2, dim=1)
        return linear_fp32(self.head, self.norm(x) * (1 + scale) + shift)


# ---------------------------------------------------------------------------------------------
# The model

class BlockCache(Protocol):
    """Lets a caller answer the transformer blocks from a cache (TeaCache, one per guidance
    pass): before the blocks the DiT asks `reuse(e0)` — a residual to add to the tokens instead
    of running them, or None — and after running them hands `store` what they added
    (tokens after − tokens before). The residual is this rank's token slice, in the weights'
    dtype; e0 [B, 6, D] float32 is the blocks' modulation input."""

    def reuse(self, e0: torch.Tensor) -> torch.Tensor | None: ...

    def store(self, residual: torch.Tensor) -> None: ...


class MultiTalkDiT(nn.Module):
    def __init__(self, cfg: DiTConfig, sequence=None):
        """`sequence`: how the tokens of a forward are laid out over ranks — WholeSequence
        (one device, the default) or daemon.parallel.sequence.SequenceParallel."""
        super().__init__()
        self.cfg = cfg
        self.sequence = sequence if sequence is not None else WholeSequence()
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size,
                                         stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim),
                                            nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = TimeEmbedding(cfg.freq_dim, cfg.dim)
        self.time_projection = TimeProjection(cfg.dim)
        self.img_emb = MLPProj(cfg.clip_dim, cfg.dim)
        self.audio_proj = AudioProjModel(
            window=cfg.audio_window, window_later=cfg.audio_window + cfg.vae_scale - 1,
            intermediate_dim=cfg.intermediate_dim, context_tokens=cfg.context_tokens,
            output_dim=cfg.output_dim, norm_output=cfg.norm_output_audio)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                clip_fea: torch.Tensor, y: torch.Tensor, audio: torch.Tensor,
                ref_target_masks: torch.Tensor | None = None,
                block_cache: BlockCache | None = None) -> torch.Tensor:
        """Predict the flow-matching velocity for one batch of latents.

        x                 [B, 16, F, H, W]   noisy latent (any float dtype)
        t                 [B]                timestep values from the schedule (e.g. 371.43)
        context           [B, Lt, 4096]      T5 output, Lt ≤ text_len (zero-padded here; no mask)
        clip_fea          [B, 257, 1280]     CLIP tokens of the reference image
        y                 [B, 20, F, H, W]   frame mask (4) + VAE latent of the condition video (16)
        audio             [B, speakers, 4(F−1)+1, window, 12, 768]  wav2vec2 windows per video frame
                          (`gather_audio_windows`); 1 speaker = plain per-frame attention
        ref_target_masks  [3, H, W] 0/1      person 1, person 2, background at latent resolution;
                          required for 2 speakers
        block_cache       may skip the blocks and add their cached residual instead (TeaCache);
                          None runs them
        → [B, 16, F, H, W] float32
        """
        cfg = self.cfg
        dtype = self.patch_embedding.weight.dtype
        speakers = audio.shape[1]
        if speakers not in (1, 2):
            raise ValueError(f"MultiTalk routes one or two speakers, got {speakers}")
        if speakers == 2 and ref_target_masks is None:
            raise ValueError("two speakers need ref_target_masks (person 1, person 2, background)")

        tokens, grid = self.patchify(torch.cat([x, y], dim=1).to(dtype))            # [B, L, D]

        # time: e feeds the head, e0 the blocks' adaLN
        e = self.time_embedding(t)                                                   # [B, D] f32
        e0 = self.time_projection(e)                                                 # [B, 6, D] f32

        # context: text padded with zeros to text_len and attended without a mask (official)
        if context.shape[1] > cfg.text_len:
            raise ValueError(f"context has {context.shape[1]} tokens, the model takes at most {cfg.text_len}")
        context = F.pad(context.to(dtype), (0, 0, 0, cfg.text_len - context.shape[1]))
        context_text = self.text_embedding(context)                                  # [B, text_len, D]
        context_img = self.img_emb(clip_fea.to(dtype))                               # [B, 257, D]

        audio_tokens = self.embed_audio(audio.to(dtype))                             # [B, F, speakers·K, A]
        if audio_tokens.shape[1] != grid[0]:
            raise ValueError(f"audio covers {audio_tokens.shape[1]} latent frames, latent has {grid[0]}")

        person_masks = None
        if speakers == 2:
            person_masks = token_masks(ref_target_masks, grid[1:]).to(dtype)        # [3, Hp·Wp]
        rope = rope_3d(grid, cfg.head_dim, cfg.rope_theta, tokens.device, dtype)

        # this rank's slice of the tokens and of their RoPE rows (all of them on one device)
        shard = self.sequence.shard(total=tokens.shape[1], frame_tokens=grid[1] * grid[2])
        tokens = shard.split(tokens)
        rope = tuple(shard.split(table, dim=0) for table in rope)

        cached = block_cache.reuse(e0) if block_cache is not None else None
        if cached is not None:
            tokens = tokens + cached
        else:
            # Only a cache needs the input kept alive through the blocks (a token slice's size).
            before = tokens if block_cache is not None else None
            for block in self.blocks:
                tokens = block(tokens, e0, rope, context_img, context_text, audio_tokens,
                               person_masks, shard)
            if block_cache is not None:
                block_cache.store(tokens - before)

        return self.unpatchify(shard.gather(self.head(tokens, e)), grid)

    def patchify(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """[B, C, F, H, W] → tokens [B, L, D] in (f, h, w) row-major order, and the grid.

        The stride = kernel Conv3d `patch_embedding` computed as one GEMM over flattened patches:
        the same parameters and result, and it stays full float32 on GPUs where cuDNN
        convolutions default to TF32.
        """
        b, c, f, h, w = video.shape
        p0, p1, p2 = self.cfg.patch_size
        if f % p0 or h % p1 or w % p2:
            raise ValueError(f"latent {f}×{h}×{w} is not a multiple of the patch {p0}×{p1}×{p2}")
        grid = (f // p0, h // p1, w // p2)
        patches = video.view(b, c, grid[0], p0, grid[1], p1, grid[2], p2)
        patches = patches.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, math.prod(grid), c * p0 * p1 * p2)
        conv = self.patch_embedding
        return F.linear(patches, conv.weight.flatten(1), conv.bias), grid

    def compile_blocks(self) -> None:
        """torch.compile every block (one graph per input shape, shared by all 40 blocks).

        Fuses the float32 LayerNorm/adaLN modulation, RMSNorm, RoPE and gate passes that sit
        between the GEMMs and the attention: 14.2 → 11.4 s per 960² forward on an H100
        (docs/performance.md). The first forward at a new shape pays the compilation.
        """
        for block in self.blocks:
            block.compile(dynamic=False)

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, speakers, frames, W, 12, 768] → [B, F, speakers·K, A], speakers concatenated per frame."""
        batch, speakers = audio.shape[:2]
        first, later = split_latent_windows(audio.flatten(0, 1), self.cfg.vae_scale)
        per_speaker = self.audio_proj(first, later)                                  # [B·speakers, F, K, A]
        per_speaker = per_speaker.unflatten(0, (batch, speakers))                    # [B, speakers, F, K, A]
        return per_speaker.transpose(1, 2).flatten(2, 3)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, p0·p1·p2·C] → [B, C, F·p0, Hp·p1, Wp·p2]; head channel = ((p·p1 + q)·p2 + r)·C + c."""
        b = x.shape[0]
        x = x.view(b, *grid, *self.cfg.patch_size, self.cfg.out_dim)   # b f h w p q r c
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)                          # b c f p h q w r
        return x.reshape(b, self.cfg.out_dim, *(g * p for g, p in zip(grid, self.cfg.patch_size)))


def token_masks(masks: torch.Tensor, token_grid: tuple[int, int]) -> torch.Tensor:
    """[C, H, W] latent-resolution masks → [C, Hp·Wp] 0/1 on the token grid (nearest, > 0)."""
    resized = F.interpolate(masks[None].float(), size=token_grid, mode="nearest")[0]
    return (resized > 0).flatten(1).float()
