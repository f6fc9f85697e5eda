"""Fixture runners for the text encoder (umt5) and the image encoder (CLIP ViT-H).

Both load the case's checkpoint with the daemon's own loaders and return outputs and
intermediates keyed as in the case file.
"""
from __future__ import annotations

import torch

from daemon.models.checks import CaseContext
from daemon.models.clip import load_clip_vision
from daemon.models.t5 import load_t5_encoder, trim_to_prompts


@torch.no_grad()
def run_t5(ctx: CaseContext) -> dict[str, torch.Tensor]:
    encoder = load_t5_encoder(ctx.fixture_dir / ctx.params["checkpoint"],
                              device=ctx.device, dtype=ctx.dtype)
    ids = ctx.tensors["ids"].to(ctx.device)
    mask = ctx.tensors["mask"].to(ctx.device)
    out = encoder(ids, mask)
    result = {"out": out}
    for i, context in enumerate(trim_to_prompts(out, mask)):
        result[f"context.{i}"] = context
    return result


def _vision_heads(ctx: CaseContext) -> int:
    # No tensor shape records the head count; the fixture set writes down the one it built.
    config = ctx.params.get("config") or ctx.cases_json["configs"]["clip"]
    return int(config["vision_heads"])


@torch.no_grad()
def run_clip(ctx: CaseContext) -> dict[str, torch.Tensor]:
    encoder = load_clip_vision(ctx.fixture_dir / ctx.params["checkpoint"],
                               device=ctx.device, dtype=ctx.dtype, num_heads=_vision_heads(ctx))
    videos = ctx.tensors["videos"].to(ctx.device)
    pixels = encoder.pixel_values(videos)
    return {"inter.pixel_values": pixels, "out": encoder(pixels.to(ctx.dtype))}


RUNNERS = {"t5": run_t5, "clip": run_clip}
