"""Colour correction of generated clips against the reference image: a Lab mean/std transfer.

Long renders drift in colour clip by clip, because each clip continues from the last frames of
the one before. The official pipeline (`match_and_blend_colors`, on by default with strength
1.0) pulls every decoded frame back to the reference image's colour statistics: per frame and
per CIELAB channel, x ← (x − mean_frame)·std_ref/std_frame + mean_ref (a flat channel takes the
reference mean), back to RGB, clipped, and blended with the uncorrected frame by `strength`.

Same here, in torch on the frames' device, with skimage's conventions for the conversions
(sRGB companding, D65 2° white, the 0.008856 / 7.787 CIE linear segment) and float64 maths as
skimage's numpy code, one frame at a time so a 720p clip never needs a float64 copy at once.
"""
from __future__ import annotations

import torch

# sRGB (linear) → CIE XYZ, and the D65 2° reference white (skimage's tables).
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                 (0.212671, 0.715160, 0.072169),
                 (0.019334, 0.119193, 0.950227))
_D65 = (0.95047, 1.0, 1.08883)
_EPSILON = 0.008856          # (6/29)³: below it the Lab curve is linear
_KAPPA = 7.787               # slope of that linear part


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] RGB in [0, 1] → [..., 3] CIELAB (L in [0, 100])."""
    rgb = rgb.to(torch.float64)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).clamp_min(0) ** 2.4, rgb / 12.92)
    xyz = linear @ _matrix(_XYZ_FROM_RGB, rgb).T / _white(rgb)
    f = torch.where(xyz > _EPSILON, xyz.clamp_min(0) ** (1 / 3), _KAPPA * xyz + 16 / 116)
    fx, fy, fz = f.unbind(-1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """[..., 3] CIELAB → [..., 3] RGB clipped to [0, 1] (float64)."""
    lab = lab.to(torch.float64)
    L, a, b = lab.unbind(-1)
    fy = (L + 16) / 116
    # Negative z (out of gamut) is clipped to 0, as skimage does (with its warning).
    f = torch.stack([a / 500 + fy, fy, (fy - b / 200).clamp_min(0)], dim=-1)
    xyz = torch.where(f > 0.2068966, f ** 3, (f - 16 / 116) / _KAPPA) * _white(lab)
    linear = xyz @ torch.linalg.inv(_matrix(_XYZ_FROM_RGB, lab)).T
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0) ** (1 / 2.4) - 0.055,
                      12.92 * linear)
    return rgb.clamp(0, 1)


def match_colors(video: torch.Tensor, reference: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Pull each frame's Lab statistics to the reference image's.

    video [3, T, H, W] and reference [3, H', W'] in [-1, 1] → [3, T, H, W] in [-1, 1], in the
    video's dtype. strength 0 returns the video unchanged; 1 is the official default.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour correction strength {strength} must be between 0 and 1")
    if strength == 0.0:
        return video
    ref_lab = rgb_to_lab(_to_unit_rgb(reference))                     # [H', W', 3]
    ref_mean = ref_lab.mean(dim=(0, 1))
    ref_std = ref_lab.std(dim=(0, 1), correction=0)                   # numpy's std
    out = torch.empty_like(video)
    for i in range(video.shape[1]):
        source = _to_unit_rgb(video[:, i]).to(torch.float64)         # [H, W, 3]
        lab = rgb_to_lab(source)
        mean = lab.mean(dim=(0, 1))
        std = lab.std(dim=(0, 1), correction=0)
        flat = std == 0
        scaled = (lab - mean) * (ref_std / torch.where(flat, torch.ones_like(std), std)) + ref_mean
        lab = torch.where(flat, ref_mean.expand_as(lab), scaled)
        blended = (1 - strength) * source + strength * lab_to_rgb(lab)
        out[:, i] = (blended * 2 - 1).permute(2, 0, 1).to(video.dtype)
    return out


def _to_unit_rgb(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] in [-1, 1] → [H, W, 3] in [0, 1] (clipped, as the official code does)."""
    return ((image + 1) / 2).clamp(0, 1).permute(1, 2, 0)


def _matrix(rows, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, device=like.device)


def _white(like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_D65, dtype=torch.float64, device=like.device)
