"""Shifted flow-matching schedule, Euler step and the two guidance forms."""
from __future__ import annotations

import torch

from daemon.pipeline.sampler import (add_noise, default_shift, euler_step, guide_audio,
                                     guide_text_and_audio, raw_timesteps, sampling_timesteps,
                                     silent_audio, timestep_transform)


def test_raw_timesteps_are_linspace_from_1000_to_1_then_zero():
    assert raw_timesteps(4).tolist() == [1000.0, 667.0, 334.0, 1.0, 0.0]
    assert raw_timesteps(4).dtype == torch.float32


def test_shift_warps_towards_high_noise_and_keeps_the_ends():
    assert timestep_transform(torch.tensor([500.0]), 7.0).item() == 875.0     # 3.5 / 4 · 1000
    ts = sampling_timesteps(40, 11.0)
    assert ts.shape == (41,) and ts[0].item() == 1000.0 and ts[-1].item() == 0.0
    assert bool((ts[1:] < ts[:-1]).all())
    assert default_shift("480p") == 7.0 and default_shift("720p") == 11.0


def test_euler_step_moves_against_the_velocity_by_dt():
    latent = torch.full((2, 3), 1.0)
    velocity = torch.full((2, 3), 2.0)
    out = euler_step(latent, velocity, torch.tensor([875.0]), torch.tensor([625.0]))
    assert torch.equal(out, torch.full((2, 3), 0.5))                       # 1 − 2 · 0.25


def test_three_pass_guidance_combines_text_and_audio_directions():
    cond, drop_text, uncond = torch.tensor([7.0]), torch.tensor([3.0]), torch.tensor([1.0])
    assert guide_text_and_audio(cond, drop_text, uncond, 5.0, 4.0).item() == 1 + 5 * 4 + 4 * 2
    assert torch.equal(guide_text_and_audio(cond, drop_text, uncond, 1.0, 1.0), cond)


def test_two_pass_guidance_scales_the_audio_direction():
    assert guide_audio(torch.tensor([5.0]), torch.tensor([2.0]), 2.0).item() == 8.0
    assert torch.equal(guide_audio(torch.tensor([5.0]), torch.tensor([2.0]), 1.0), torch.tensor([5.0]))


def test_silent_audio_is_one_zero_speaker():
    audio = torch.randn(1, 2, 9, 5, 12, 768)
    silent = silent_audio(audio)
    assert silent.shape == (1, 1, 9, 5, 12, 768) and not silent.any()


def test_add_noise_interpolates_from_clean_at_0_to_noise_at_1000():
    clean, noise = torch.zeros(4), torch.ones(4)
    assert torch.equal(add_noise(clean, noise, torch.tensor([0.0])), clean)
    assert torch.equal(add_noise(clean, noise, torch.tensor([1000.0])), noise)
    assert torch.equal(add_noise(clean, noise, torch.tensor([250.0])), torch.full((4,), 0.25))
