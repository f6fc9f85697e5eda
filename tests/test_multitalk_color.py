"""Colour correction against the reference image: CIELAB conversions and the mean/std transfer."""
from __future__ import annotations

import torch

from daemon.pipeline.color import lab_to_rgb, match_colors, rgb_to_lab


def test_lab_values_of_known_colours_match_skimage():
    lab = rgb_to_lab(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    expected = torch.tensor([[53.2408, 80.0925, 67.2032], [0.0, 0.0, 0.0], [100.0, -0.0025, 0.0047]],
                            dtype=torch.float64)
    assert torch.allclose(lab, expected, atol=1e-3)


def test_lab_to_rgb_inverts_rgb_to_lab():
    rgb = torch.rand(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-9)


def _frames(seed: int, frames: int, scale: float, shift: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, 1, 12, 16, generator=g) * 0.5 - 0.25        # mid-range: stays in gamut
    return (base * scale + shift).expand(3, frames, 12, 16).clone()


def test_corrected_frames_take_the_reference_lab_statistics():
    reference = _frames(1, 1, 1.0, 0.0)[:, 0]
    drifted = _frames(2, 3, 0.7, 0.15)                                # duller and brighter
    corrected = match_colors(drifted, reference)
    ref_lab = rgb_to_lab(((reference + 1) / 2).permute(1, 2, 0))
    for i in range(3):
        lab = rgb_to_lab(((corrected[:, i] + 1) / 2).permute(1, 2, 0))
        assert torch.allclose(lab.mean((0, 1)), ref_lab.mean((0, 1)), atol=1e-3)
        assert torch.allclose(lab.std((0, 1), correction=0), ref_lab.std((0, 1), correction=0), atol=1e-3)


def test_the_reference_itself_is_unchanged_and_strength_blends_linearly():
    reference = _frames(3, 1, 1.0, 0.0)[:, 0]
    assert torch.allclose(match_colors(reference[:, None], reference)[:, 0], reference, atol=1e-6)
    drifted = _frames(4, 2, 0.8, -0.1)
    assert match_colors(drifted, reference, 0.0) is drifted
    full = match_colors(drifted, reference, 1.0)
    half = match_colors(drifted, reference, 0.5)
    assert torch.allclose(half, (drifted + full) / 2, atol=1e-6)


def test_a_flat_frame_takes_the_reference_mean_colour():
    reference = _frames(5, 1, 1.0, 0.0)[:, 0]
    grey = torch.zeros(3, 1, 12, 16)
    corrected = match_colors(grey, reference)
    mean_lab = rgb_to_lab(((reference + 1) / 2).permute(1, 2, 0)).mean((0, 1))
    expected = lab_to_rgb(mean_lab) * 2 - 1
    assert torch.allclose(corrected[:, 0, 0, 0], expected.float(), atol=1e-6)
    assert torch.equal(corrected.amax((1, 2, 3)), corrected.amin((1, 2, 3)))    # still flat
