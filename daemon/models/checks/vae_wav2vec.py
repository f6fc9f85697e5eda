"""Fixture runners for the Wan VAE (encode, decode) and the wav2vec2 audio features.

Each loads the fixture set's files with the daemon's own loaders and returns outputs and
intermediates keyed as in the case file.
"""
from __future__ import annotations

import torch

from daemon.models.checks import CaseContext
from daemon.models.vae import WanVAE
from daemon.models.wav2vec import (AudioFeatureExtractor, normalize_loudness, to_video_rate,
                                   video_frame_count)

# The folder name users download to (and the fixture set mirrors).
WAV2VEC_FOLDER = "chinese-wav2vec2-base"


def _vae(ctx: CaseContext) -> WanVAE:
    return WanVAE.load(ctx.fixture_dir / ctx.params["checkpoint"], device=ctx.device, dtype=ctx.dtype)


def run_vae_encode(ctx: CaseContext) -> dict[str, torch.Tensor]:
    return {"latent": _vae(ctx).encode(ctx.tensors["video"])}


def run_vae_decode(ctx: CaseContext) -> dict[str, torch.Tensor]:
    unclamped = _vae(ctx).decode_unclamped(ctx.tensors["latent"])
    return {"inter.video_unclamped": unclamped, "video": unclamped.clamp(-1, 1)}


def run_wav2vec(ctx: CaseContext) -> dict[str, torch.Tensor]:
    extractor = AudioFeatureExtractor(ctx.fixture_dir / WAV2VEC_FOLDER, device=ctx.device, dtype=ctx.dtype)
    waveform = ctx.tensors["waveform"].cpu().numpy()
    loud = normalize_loudness(waveform)
    values = extractor.input_values(loud)
    conv = extractor.conv_features(values)
    frames = to_video_rate(conv, video_frame_count(len(waveform)))
    return {
        "waveform_loudnorm": torch.from_numpy(loud),
        "input_values": values,
        "inter.conv_features": conv,
        "inter.interp_features": frames,
        "features": extractor.encode(frames),
    }


RUNNERS = {"vae_encode": run_vae_encode, "vae_decode": run_vae_decode, "wav2vec": run_wav2vec}
