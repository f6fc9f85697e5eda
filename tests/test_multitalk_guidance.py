"""Guidance as the pipeline combines it: CFG, APG (momentum, norm cap, projection), TeaCache."""
from __future__ import annotations

import pytest
import torch

from daemon.pipeline.multitalk import (APG_MOMENTUM, TEACACHE_COEFFICIENTS, MomentumBuffer,
                                       SamplingSettings, TeaCache, clip_seed, combine_guidance,
                                       describe_clips, projected_guidance)
from daemon.pipeline.sampler import guide_audio, guide_text_and_audio
from shared.scene import Settings

g = torch.Generator().manual_seed(0)
SHAPE = (1, 16, 3, 4, 4)


def rand() -> torch.Tensor:
    return torch.randn(SHAPE, generator=g)


def settings(**changes) -> SamplingSettings:
    return SamplingSettings.from_scene(Settings(**changes), None)


def test_apg_keeps_only_the_part_orthogonal_to_the_conditional_prediction():
    diff, cond = rand(), rand()
    out = projected_guidance(diff, cond, MomentumBuffer(0.0), norm_threshold=0)
    assert abs(float((out * cond).sum())) < 1e-4                      # orthogonal to cond
    parallel = diff - out                                              # the removed part
    cosine = (parallel * cond).sum() / (parallel.norm() * cond.norm())
    assert abs(float(cosine)) == pytest.approx(1.0, abs=1e-5)


def test_apg_caps_the_difference_norm_at_the_threshold():
    cond = torch.zeros(SHAPE)
    cond[0, 0, 0, 0, 0] = 1.0
    diff = torch.zeros(SHAPE)
    diff[0, 1, 0, 0, 0] = 110.0                                       # orthogonal to cond
    out = projected_guidance(diff, cond, MomentumBuffer(0.0), norm_threshold=55)
    assert float(out.norm()) == pytest.approx(55.0)
    small = diff / 10                                                  # norm 11: left as is
    assert torch.allclose(projected_guidance(small, cond, MomentumBuffer(0.0)), small)


def test_apg_momentum_adds_the_running_average_with_negative_momentum():
    buffer = MomentumBuffer(APG_MOMENTUM)
    first, second = rand(), rand()
    buffer.update(first)
    assert torch.allclose(buffer.update(second), second - 0.75 * first)


def test_three_passes_combine_as_classifier_free_guidance():
    p = {"cond": rand(), "drop_text": rand(), "uncond": rand()}
    s = settings(text_guide=5.0, audio_guide=4.0)
    momentum = {"text": MomentumBuffer(APG_MOMENTUM), "audio": MomentumBuffer(APG_MOMENTUM)}
    assert torch.equal(combine_guidance(p, s, momentum),
                       guide_text_and_audio(p["cond"], p["drop_text"], p["uncond"], 5.0, 4.0))


def test_text_guide_one_means_two_passes():
    s = settings(text_guide=1.0, audio_guide=2.0)
    assert s.two_pass
    p = {"cond": rand(), "drop_audio": rand()}
    momentum = {"text": MomentumBuffer(0.0), "audio": MomentumBuffer(0.0)}
    assert torch.equal(combine_guidance(p, s, momentum), guide_audio(p["cond"], p["drop_audio"], 2.0))


def test_apg_guidance_is_cond_plus_scaled_projected_differences():
    p = {"cond": rand(), "drop_text": rand(), "uncond": rand()}
    s = settings(text_guide=5.0, audio_guide=4.0, apg=True)
    momentum = {"text": MomentumBuffer(0.0), "audio": MomentumBuffer(0.0)}
    out = combine_guidance(p, s, momentum)
    expected = (p["cond"]
                + 4 * projected_guidance(p["cond"] - p["drop_text"], p["cond"], MomentumBuffer(0.0))
                + 3 * projected_guidance(p["drop_text"] - p["uncond"], p["cond"], MomentumBuffer(0.0)))
    assert torch.allclose(out, expected, atol=1e-6)


def _e0(value: float) -> torch.Tensor:
    return torch.full((1, 6, 8), value)


def test_teacache_always_computes_the_warmup_steps():
    cache = TeaCache(threshold=10.0, coefficients=(0, 0, 0, 1, 0), warmup_steps=5)
    for step in range(5):
        assert cache.reuse(_e0(1.0)) is None
        cache.store(torch.full((2,), float(step)))
    assert torch.equal(cache.reuse(_e0(1.0)), torch.full((2,), 4.0))   # no change: reused
    assert cache.skipped == 1


def test_teacache_reuses_until_the_accumulated_change_reaches_the_threshold():
    # coefficients (0, 0, 0, 1, 0): the rescaled change is the relative L1 change itself
    cache = TeaCache(threshold=0.25, coefficients=(0, 0, 0, 1, 0), warmup_steps=1)
    assert cache.reuse(_e0(1.0)) is None
    cache.store(torch.ones(2))
    decisions = []
    for value in (1.1, 1.21, 1.331, 1.4641):                          # +10 % each step
        residual = cache.reuse(_e0(value))
        decisions.append(residual is not None)
        if residual is None:
            cache.store(torch.ones(2))
    # accumulated 0.1 → reuse, 0.2 → reuse, 0.3 → compute (reset), 0.1 → reuse
    assert decisions == [True, True, False, True]
    assert cache.skipped == 3


def test_teacache_polynomials_are_the_official_ones_per_preset():
    assert TEACACHE_COEFFICIENTS["480p"][0] == pytest.approx(2.57151496e+05)
    assert TEACACHE_COEFFICIENTS["720p"][-1] == pytest.approx(-4.17769401e-02)


def test_the_scene_shift_wins_then_the_daemon_flag_then_the_preset():
    assert SamplingSettings.from_scene(Settings(shift=3.0), 9.0).shift == 3.0
    assert SamplingSettings.from_scene(Settings(), 9.0).shift == 9.0
    assert SamplingSettings.from_scene(Settings(resolution="720p"), None).shift == 11.0


def test_every_clip_has_its_own_seed():
    seeds = {clip_seed(42, k) for k in range(100)}
    assert len(seeds) == 100 and clip_seed(42, 3) == clip_seed(42, 3) != clip_seed(43, 3)
    assert all(0 <= s < 2 ** 63 for s in seeds)


def test_reused_clips_are_named_as_ranges():
    assert describe_clips([0, 1, 2]) == "clips 1–3"
    assert describe_clips([1]) == "clip 2"
    assert describe_clips([0, 1, 3]) == "clips 1–2, 4"
