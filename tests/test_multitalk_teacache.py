"""TeaCache in the DiT and the sampling loop: skipped forwards run no transformer block, the
threshold 0 changes nothing, and every guidance pass keeps its own cache.

The loop runs on the tiny weights folder of tests/test_multitalk_render.py (the fixture DiT: 2
blocks). With the 480p polynomial the rescaled change of e0 is never below 0.037, so threshold
0 never skips; a huge threshold skips every forward after the 5 warm-up steps of each pass.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from daemon.models.dit_loader import load_dit
from daemon.pipeline.longvideo import plan_clips
from daemon.pipeline.models import ModelBundle, Placement, WeightPaths
from daemon.pipeline.multitalk import (TEACACHE_WARMUP_STEPS, ClipCondition, ClipProgress,
                                       SamplingSettings, TeaCache, TextContext)
from daemon.pipeline.progress import Reporter
from daemon.pipeline.sampler import sampling_timesteps
from shared.scene import Line, Settings
from tests.test_models_dit import random_inputs
from tests.test_multitalk_render import (FIXTURES, build_weights, one_thread,  # noqa: F401
                                         pipeline, render, scene, voice)

pytestmark = pytest.mark.skipif(not (FIXTURES / "ckpt").is_dir(), reason=f"{FIXTURES} not present")

STEPS = 8
FORCE_SKIP = 1e9          # every accumulated change is below it


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> ModelBundle:
    weights = build_weights(tmp_path_factory.mktemp("weights"))
    return ModelBundle.load(WeightPaths.under(weights), Placement.for_device("cpu"))


class BlockCounter:
    """Counts the transformer block calls of a DiT while in use."""

    def __init__(self, dit):
        self.calls = 0
        self.hooks = [block.register_forward_pre_hook(self._count) for block in dit.blocks]

    def _count(self, module, args) -> None:
        self.calls += 1

    def __enter__(self) -> "BlockCounter":
        return self

    def __exit__(self, *exc) -> None:
        for hook in self.hooks:
            hook.remove()


def sampling(teacache: bool, threshold: float = 0.3, text_guide: float = 5.0) -> SamplingSettings:
    """Sampling settings of a scene; the threshold set here, outside the scene's 0.05–1.0."""
    scene_settings = Settings(steps=STEPS, teacache=teacache, text_guide=text_guide)
    return replace(SamplingSettings.from_scene(scene_settings, None), teacache_threshold=threshold)


def denoise(bundle: ModelBundle, tmp_path, s: SamplingSettings) -> tuple[torch.Tensor, int, int]:
    """One clip's sampling loop (29 frames at 64×32: 8 latent frames of 4×8) → the latent, the
    block calls and the forwards TeaCache answered."""
    g = torch.Generator().manual_seed(11)
    frames, h, w = 8, 4, 8
    y = torch.randn(1, 20, frames, h, w, generator=g)
    condition = ClipCondition(y, torch.randn(1, 257, 1280, generator=g),
                              torch.randn(1, 2, 29, 5, 12, 768, generator=g), None)
    text = TextContext(torch.randn(1, 3, 4096, generator=g), torch.randn(1, 2, 4096, generator=g))
    masks = torch.zeros(3, h, w)
    masks[0, :, :w // 2], masks[1, :, w // 2:] = 1, 1
    pipe = pipeline(bundle, tmp_path / "cache")
    generator = torch.Generator().manual_seed(3)
    timesteps = sampling_timesteps(s.steps, s.shift)
    latent = pipe.prepare_latents(y, None, generator, timesteps[0])
    progress = ClipProgress(Reporter(), plan_clips(29, 29, 5)[0], 1, s.steps)
    with BlockCounter(bundle.dit) as counter:
        out, skipped = pipe.denoise(latent, text, condition, masks, s, timesteps, generator,
                                    progress, lead=False)
    return out, counter.calls, skipped


def test_a_reused_forward_runs_no_block_and_adds_the_stored_residual():
    dit = load_dit(FIXTURES / "ckpt", device="cpu", dtype=torch.float32)
    inputs = random_inputs(dit.cfg, frames=2, h=4, w=6)
    cache = TeaCache(threshold=FORCE_SKIP, coefficients=(0, 0, 0, 1, 0), warmup_steps=1)
    with torch.no_grad(), BlockCounter(dit) as counter:
        plain = dit(**inputs)
        computed = dit(**inputs, block_cache=cache)
        assert counter.calls == 2 * dit.cfg.num_layers and cache.residual is not None
        reused = dit(**inputs, block_cache=cache)
        assert counter.calls == 2 * dit.cfg.num_layers          # no block ran
    assert cache.skipped == 1
    assert cache.residual.shape == (1, 2 * 2 * 3, dit.cfg.dim)  # this rank's tokens × dim
    assert torch.equal(computed, plain)                         # storing changes nothing
    # tokens + (blocks(tokens) − tokens): the same up to one rounding of the residual
    torch.testing.assert_close(reused, plain, rtol=0, atol=1e-5)


def test_a_forced_skip_runs_only_the_warmup_steps_of_each_pass(bundle, tmp_path):
    layers, passes = bundle.dit.cfg.num_layers, 3
    plain, plain_calls, plain_skipped = denoise(bundle, tmp_path, sampling(teacache=False))
    cached, calls, skipped = denoise(bundle, tmp_path, sampling(teacache=True, threshold=FORCE_SKIP))
    assert (plain_calls, plain_skipped) == (STEPS * passes * layers, 0)                # 48
    assert calls == TEACACHE_WARMUP_STEPS * passes * layers                            # 30
    assert skipped == (STEPS - TEACACHE_WARMUP_STEPS) * passes                         # 9
    assert torch.isfinite(cached).all()
    assert not torch.equal(cached, plain)


def test_two_pass_mode_caches_its_two_passes(bundle, tmp_path):
    _, calls, skipped = denoise(bundle, tmp_path,
                                sampling(teacache=True, threshold=FORCE_SKIP, text_guide=1.0))
    assert calls == TEACACHE_WARMUP_STEPS * 2 * bundle.dit.cfg.num_layers
    assert skipped == (STEPS - TEACACHE_WARMUP_STEPS) * 2


def test_threshold_zero_is_the_same_as_no_cache(bundle, tmp_path):
    plain, plain_calls, _ = denoise(bundle, tmp_path, sampling(teacache=False))
    cached, calls, skipped = denoise(bundle, tmp_path, sampling(teacache=True, threshold=0.0))
    assert (calls, skipped) == (plain_calls, 0)
    assert torch.equal(cached, plain)


def test_a_teacache_render_says_how_many_passes_it_reused(bundle, tmp_path):
    sc = scene([Line(0, "", audio=voice(0.5, 220)), Line(1, "", audio=voice(0.3, 330), pause_after=0)],
               steps=TEACACHE_WARMUP_STEPS + 2, teacache=True, teacache_threshold=1.0)
    result, _ = render(pipeline(bundle, tmp_path / "cache"), sc, tmp_path / "job")
    assert result.clips == 1
    assert 0 <= result.teacache_skipped <= 2 * 3      # at most the 2 steps past the warm-up
    passes = (TEACACHE_WARMUP_STEPS + 2) * 3           # three guidance passes a step
    assert result.warnings == [f"TeaCache reused {result.teacache_skipped} of {passes} "
                               f"transformer passes"]
