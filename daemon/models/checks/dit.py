"""Fixture runners for the DiT family: kinds dit, audio_proj, masks, schedule.

Weights come through `dit_loader.load_dit`, the daemon's own path; every size comes from the
checkpoint's config.json, the tensors' shapes and the case's params.
"""
from __future__ import annotations

import torch

from daemon.models.audio_proj import audio_window_index
from daemon.models.checks import CaseContext
from daemon.models.dit import MultiTalkDiT
from daemon.models.dit_loader import load_dit
from daemon.pipeline.masks import reference_masks
from daemon.pipeline.sampler import (euler_step, guide_audio, guide_text_and_audio, raw_timesteps,
                                     silent_audio, timestep_transform)

CKPT_DIR = "ckpt"


def _load(ctx: CaseContext) -> MultiTalkDiT:
    return load_dit(ctx.fixture_dir / CKPT_DIR, device=ctx.device, dtype=ctx.dtype)


class _Recorder:
    """Forward hooks that copy the official intermediates out of one DiT call."""

    def __init__(self, model: MultiTalkDiT):
        self.out: dict[str, torch.Tensor] = {}
        taps = {"inter.e": model.time_embedding, "inter.e0": model.time_projection,
                "inter.context_text": model.text_embedding, "inter.context_clip": model.img_emb,
                "inter.audio_embedding": model.audio_proj}
        for i, block in enumerate(model.blocks):
            taps[f"inter.blocks.{i}.out"] = block
            taps[f"inter.blocks.{i}.audio_cross_attn"] = block.audio_cross_attn
            taps[f"inter.blocks.{i}.x_ref_attn_map"] = block.self_attn
        self.handles = [module.register_forward_hook(self._hook(key)) for key, module in taps.items()]

    def _hook(self, key: str):
        def hook(module, args, output):
            if key.endswith("x_ref_attn_map"):
                output = output[1]          # (y, map); map is None for one speaker: not computed
                if output is None:
                    return
                output = output[0]          # [B, 3, L] → [3, L] (batch of one)
            self.out[key] = output.detach().float().cpu()
        return hook

    def close(self) -> dict[str, torch.Tensor]:
        for handle in self.handles:
            handle.remove()
        return self.out


def run_dit(ctx: CaseContext) -> dict[str, torch.Tensor]:
    model = _load(ctx)
    tensors = ctx.tensors
    dev, dtype = ctx.device, ctx.dtype
    x = tensors["x"][None].to(dev, dtype)                                  # [1, 16, F, H, W]
    frames = x.shape[2]
    tokens = frames * x.shape[3] * x.shape[4] // 4
    if int(tensors["seq_len"]) != tokens:
        raise ValueError(f"seq_len {int(tensors['seq_len'])} ≠ {tokens} tokens: padding is not supported")

    # The pipeline's window gather, recomputed (and compared against the case's audio_index).
    audio_full = tensors["audio_full"].to(dev, dtype)                      # [speakers, T, 12, 768]
    frame_num = model.cfg.vae_scale * (frames - 1) + 1
    index = audio_window_index(ctx.params.get("audio_start", 0), frame_num, audio_full.shape[1],
                               model.cfg.audio_window, device=dev)
    audio = audio_full[:, index][None]                                     # [1, speakers, frames, 5, 12, 768]

    t = tensors["t"].to(dev)
    common = dict(t=t, clip_fea=tensors["clip_fea"].to(dev, dtype), y=tensors["y"].to(dev, dtype),
                  ref_target_masks=tensors["ref_target_masks"].to(dev))
    context = tensors["context"][None].to(dev, dtype)

    results: dict[str, torch.Tensor] = {"audio_index": index.cpu()}
    recorder = _Recorder(model)
    try:
        with torch.no_grad():
            cond = model(x, context=context, audio=audio, **common)
    finally:
        results.update(recorder.close())
    results["out"] = cond

    if "context_null" in tensors:       # the other guidance passes of one sampling step
        context_null = tensors["context_null"][None].to(dev, dtype)
        silent = silent_audio(audio)
        with torch.no_grad():
            drop_text = model(x, context=context_null, audio=audio, **common)
            uncond = model(x, context=context_null, audio=silent, **common)
            drop_audio = model(x, context=context, audio=silent, **common)
        results.update({"out_drop_text": drop_text, "out_uncond": uncond, "out_drop_audio": drop_audio})
        t_next = tensors["t_next"].to(dev)
        guided = {
            "cfg3": guide_text_and_audio(cond[0], drop_text[0], uncond[0],
                                         ctx.params["text_guide_scale"], ctx.params["audio_guide_scale"]),
            "cfg2": guide_audio(cond[0], drop_audio[0], ctx.params["lora_audio_guide_scale"]),
        }
        for name, noise_pred in guided.items():
            results[f"{name}.noise_pred"] = noise_pred
            results[f"{name}.latent_next"] = euler_step(x[0].float(), noise_pred, t, t_next)
    return results


def run_audio_proj(ctx: CaseContext) -> dict[str, torch.Tensor]:
    audio_proj = _load(ctx).audio_proj
    first = ctx.tensors["audio_embeds"].to(ctx.device, ctx.dtype)
    later = ctx.tensors["audio_embeds_vf"].to(ctx.device, ctx.dtype)
    with torch.no_grad():
        return {"out": audio_proj(first, later)}


def run_masks(ctx: CaseContext) -> dict[str, torch.Tensor]:
    p = ctx.params
    sizes = dict(src_h=p["src_h"], src_w=p["src_w"], target_h=p["target_h"], target_w=p["target_w"],
                 lat_h=p["lat_h"], lat_w=p["lat_w"], face_scale=p.get("face_scale", 0.05))
    boxes = ctx.tensors["bbox"].tolist()
    return {
        "ref_target_masks_bbox": reference_masks(speakers=2, boxes=boxes, **sizes),
        "ref_target_masks_default": reference_masks(speakers=2, boxes=None, **sizes),
    }


def run_schedule(ctx: CaseContext) -> dict[str, torch.Tensor]:
    out = {}
    num_timesteps = ctx.params.get("num_timesteps", 1000)
    for schedule in ctx.params["schedules"]:
        steps, shift = schedule["steps"], schedule["shift"]
        name = f"s{steps}_shift{shift:g}"
        raw = raw_timesteps(steps, num_timesteps)
        warped = timestep_transform(raw, shift, num_timesteps)
        out[f"raw.{name}"] = raw
        out[f"timesteps.{name}"] = warped
        out[f"dt.{name}"] = (warped[:-1] - warped[1:]) / num_timesteps
    return out


RUNNERS = {"dit": run_dit, "audio_proj": run_audio_proj, "masks": run_masks, "schedule": run_schedule}
