"""The CLIP ViT-H/14 image tower (open-clip xlm-roberta-large vit-huge-14) as MultiTalk uses it.

MultiTalk calls `clip.visual(cond_image[:, :, -1:])`: the reference frame is resized to the
tower's input size, normalised, and run through every transformer block **but the last**
(`use_31_block`); the patch tokens and the class token of that block's output, without
post_norm or the projection head, become the DiT's 257 image-context tokens.

The released `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` also holds the text
tower (`textual.*`) and `log_scale`; only `visual.*` is read, and of it only what runs (not
`post_norm`, `head` or the last block). Parameter names are those under `visual.`, so loading
is a prefix strip and a strict `load_state_dict`.

Sizes come from tensor shapes (real: 224² input, patch 14, width 1280, MLP 5120, 32 blocks),
except the head count, which no shape records: the reference hard-codes 16 heads for ViT-H
(open-clip's ViT-H-14 config: head width 80). `load_clip_vision` takes `num_heads` and
otherwise derives width // 80.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from daemon.models.attention import attention
from daemon.models.loader import WeightsError, download_hint, load_pth

CLIP_CHECKPOINT = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
VISUAL_PREFIX = "visual."
VIT_H_HEAD_DIM = 80

# OpenAI CLIP pixel statistics (the open-clip ViT-H was trained with them)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORM_EPS = 1e-5


@dataclass(frozen=True)
class CLIPVisionConfig:
    image_size: int
    patch_size: int
    dim: int
    mlp_dim: int
    num_heads: int
    num_layers: int          # blocks in the file; the last one is not run
    eps: float = NORM_EPS

    @property
    def blocks_run(self) -> int:
        return self.num_layers - 1

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def vision_heads_for(dim: int, source: Path | str) -> int:
    """Head count of an open-clip ViT-H tower of this width (head width 80)."""
    if dim % VIT_H_HEAD_DIM:
        raise WeightsError(f"{source}: vision width {dim} is not a ViT-H width (a multiple of "
                           f"{VIT_H_HEAD_DIM}); pass num_heads explicitly")
    return dim // VIT_H_HEAD_DIM


def config_from_shapes(visual: dict[str, torch.Tensor], source: Path | str,
                       num_heads: int | None = None) -> CLIPVisionConfig:
    """Sizes of the tower from its (prefix-stripped) state_dict shapes."""
    try:
        dim, _, patch_size, _ = visual["patch_embedding.weight"].shape
        tokens = visual["pos_embedding"].shape[1]           # 1 class token + grid²
        mlp_dim = visual["transformer.0.mlp.0.weight"].shape[0]
    except KeyError as exc:
        raise WeightsError(f"{source} holds no CLIP vision tower (no visual.{exc.args[0]}) — "
                           f"{download_hint(Path(source))}") from exc
    num_layers = 0
    while f"transformer.{num_layers}.norm1.weight" in visual:
        num_layers += 1
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1 or num_layers < 2:
        raise WeightsError(f"{source}: {tokens} position embeddings and {num_layers} blocks "
                           f"are not a square-grid ViT with at least 2 blocks — "
                           f"{download_hint(Path(source))}")
    heads = num_heads if num_heads is not None else vision_heads_for(dim, source)
    if dim % heads:
        raise WeightsError(f"{source}: width {dim} does not split into {heads} heads")
    return CLIPVisionConfig(image_size=grid * patch_size, patch_size=patch_size, dim=dim,
                            mlp_dim=mlp_dim, num_heads=heads, num_layers=num_layers)


# ---------------------------------------------------------------------------------------------
# Layers, in forward order

class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the weights' dtype, as the reference does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                            self.bias.float(), self.eps).to(x.dtype)


class VisionAttention(nn.Module):
    def __init__(self, cfg: CLIPVisionConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.to_qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = self.to_qkv(x).view(b, length, 3, self.num_heads, -1).unbind(2)  # [B, L, N, D]
        x = attention(q, k, v)                                 # scale 1/√D
        return self.proj(x.reshape(b, length, dim))


class VisionBlock(nn.Module):
    """Pre-LN transformer block; MLP Linear–GELU(erf)–Linear (`mlp.0`, `mlp.2` in the file)."""

    def __init__(self, cfg: CLIPVisionConfig):
        super().__init__()
        self.norm1 = LayerNorm32(cfg.dim, eps=cfg.eps)
        self.attn = VisionAttention(cfg)
        self.norm2 = LayerNorm32(cfg.dim, eps=cfg.eps)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_dim), nn.GELU(),
                                 nn.Linear(cfg.mlp_dim, cfg.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CLIPVisionEncoder(nn.Module):
    """Pixels [B, 3, S, S] (CLIP-normalised) → features of the second-to-last block [B, 1+P, dim]."""

    def __init__(self, cfg: CLIPVisionConfig):
        super().__init__()
        self.config = cfg
        # pre-norm towers have no patch bias
        self.patch_embedding = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size,
                                         bias=False)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, 1 + cfg.num_patches, cfg.dim))
        self.pre_norm = LayerNorm32(cfg.dim, eps=cfg.eps)
        self.transformer = nn.Sequential(*(VisionBlock(cfg) for _ in range(cfg.blocks_run)))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)   # [B, P, dim]
        cls = self.cls_embedding.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding
        return self.transformer(self.pre_norm(x))

    def pixel_values(self, videos: torch.Tensor) -> torch.Tensor:
        """videos [B, 3, T, h, w] in [-1, 1] → [B·T, 3, S, S] normalised, in float32."""
        return clip_pixel_values(videos, self.config.image_size)

    @torch.no_grad()
    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        """The pipeline's `clip.visual(videos)`: [B, 3, T, h, w] in [-1, 1] → [B·T, 1+P, dim]."""
        weight = self.patch_embedding.weight
        pixels = self.pixel_values(videos.to(weight.device))
        return self(pixels.to(weight.dtype))


def clip_pixel_values(videos: torch.Tensor, image_size: int) -> torch.Tensor:
    """Frames of each video bicubic-resized to image_size², mapped to [0, 1], CLIP-normalised."""
    frames = torch.cat([
        F.interpolate(video.float().transpose(0, 1), size=(image_size, image_size),
                      mode="bicubic", align_corners=False)
        for video in videos])                                  # [B·T, 3, S, S]
    frames = frames * 0.5 + 0.5
    mean = torch.tensor(CLIP_MEAN, device=frames.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=frames.device).view(1, 3, 1, 1)
    return (frames - mean) / std


def load_clip_vision(path: Path, *, device: torch.device | str, dtype: torch.dtype,
                     num_heads: int | None = None) -> CLIPVisionEncoder:
    """The image tower of the released CLIP file, straight to `device`/`dtype`.

    A first pass on the meta device reads only shapes, so that the second reads exactly the
    tensors that run (no text tower, no last block, no head) and nothing is copied twice.
    """
    path = Path(path)
    shapes = load_pth(path, device="meta", key_filter=lambda k: k.startswith(VISUAL_PREFIX))
    cfg = config_from_shapes(_strip_prefix(shapes), path, num_heads)
    with torch.device("meta"):
        model = CLIPVisionEncoder(cfg)
    wanted = {VISUAL_PREFIX + k for k in model.state_dict()}
    state = _strip_prefix(load_pth(path, device=device, dtype=dtype,
                                   key_filter=wanted.__contains__))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not match the CLIP vision layout ({exc}) — "
                           f"{download_hint(path)}") from exc
    return model.eval().requires_grad_(False)


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(VISUAL_PREFIX):]: v for k, v in state.items()}
