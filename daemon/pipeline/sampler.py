"""Flow-matching sampling as MultiTalk does it: shifted timesteps, Euler steps, guidance.

Small pure functions over tensors; the denoising loop that calls the DiT lives in the pipeline.
Timesteps are values in (0, 1000] (the DiT takes the value, not an index); the velocity
prediction v moves the latent towards data as  latent ← latent − v · (t − t_next) / 1000.

Guidance (per step):
  text guide ≠ 1 → 3 passes: cond (prompt, audio), drop_text (negative prompt, audio),
                   uncond (negative prompt, no audio) → `guide_text_and_audio`
  text guide = 1 → 2 passes (LoRA mode): cond, drop_audio (prompt, no audio) → `guide_audio`
"No audio" is one all-zero speaker (`silent_audio`), so those passes take the one-speaker path.
"""
from __future__ import annotations

import torch

NUM_TIMESTEPS = 1000


def raw_timesteps(steps: int, num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """[steps + 1] float32: linspace(num_timesteps, 1, steps) then a final 0.

    Spaced in float64 and rounded once, as numpy's float32 linspace that the official code uses.
    """
    spaced = torch.linspace(float(num_timesteps), 1.0, steps, dtype=torch.float64).float()
    return torch.cat([spaced, torch.zeros(1)])


def timestep_transform(t: torch.Tensor, shift: float, num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """Warp u = t/num_timesteps to shift·u / (1 + (shift − 1)·u): more steps at high noise."""
    u = t / num_timesteps
    return shift * u / (1 + (shift - 1) * u) * num_timesteps


def sampling_timesteps(steps: int, shift: float, num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """The [steps + 1] float32 timestep values of one clip, last one 0."""
    return timestep_transform(raw_timesteps(steps, num_timesteps), shift, num_timesteps)


def default_shift(resolution: str) -> float:
    """The official defaults: shift 7 at 480p, 11 at 720p."""
    return {"480p": 7.0, "720p": 11.0}[resolution]


def euler_step(latent: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
               num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """latent − velocity · (t − t_next)/num_timesteps (t, t_next: 0-d or [1] tensors)."""
    dt = (t - t_next) / num_timesteps
    return latent - velocity * dt.reshape(-1)[0]


def guide_text_and_audio(cond: torch.Tensor, drop_text: torch.Tensor, uncond: torch.Tensor,
                         text_scale: float, audio_scale: float) -> torch.Tensor:
    """uncond + s_t·(cond − drop_text) + s_a·(drop_text − uncond)."""
    return uncond + text_scale * (cond - drop_text) + audio_scale * (drop_text - uncond)


def guide_audio(cond: torch.Tensor, drop_audio: torch.Tensor, audio_scale: float) -> torch.Tensor:
    """drop_audio + s_a·(cond − drop_audio): the 2-pass form when the text guide is 1."""
    return drop_audio + audio_scale * (cond - drop_audio)


def silent_audio(audio: torch.Tensor) -> torch.Tensor:
    """The "no audio" input for guidance: ONE all-zero speaker, [B, 1, ...] from [B, speakers, ...]."""
    return torch.zeros_like(audio[:, -1:])


def add_noise(clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
              num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """The flow-matching forward process at timestep value t: (1 − σ)·clean + σ·noise, σ = t/1000.

    Used to re-noise the motion frames of a continuation clip at every step.
    """
    sigma = (t.float() / num_timesteps).reshape(-1)[0]
    return (1 - sigma) * clean + sigma * noise
