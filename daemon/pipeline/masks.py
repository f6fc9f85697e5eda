"""Person masks for L-RoPE speaker routing, built as the official MultiTalk pipeline builds them.

Three masks [person 1, person 2, background] drawn in source-image pixels, then resized and
centre-cropped exactly like the reference image, then nearest-resized to the latent grid.
Boxes are [row_min, col_min, row_max, col_max] in source pixels — the official bbox JSON
convention (rows first; confusing rows and columns lip-syncs the wrong person) — covering the
half-open ranges rows[row_min:row_max], cols[col_min:col_max].
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

Box = Sequence[float]   # [row_min, col_min, row_max, col_max]

DEFAULT_FACE_SCALE = 0.05   # margin of the default left/right halves, as a fraction of the size


def source_masks(src_h: int, src_w: int, speakers: int, boxes: Sequence[Box] | None = None,
                 face_scale: float = DEFAULT_FACE_SCALE) -> torch.Tensor:
    """[3, src_h, src_w] float 0/1: person 1, person 2, background (= no person).

    One speaker: three all-ones masks (routing is unused). Two speakers: the boxes, or without
    boxes the left and right halves inset by face_scale.
    """
    if speakers == 1:
        return torch.ones(3, src_h, src_w)
    if speakers != 2:
        raise ValueError(f"person masks are for one or two speakers, got {speakers}")
    people = torch.zeros(2, src_h, src_w)
    if boxes is not None:
        if len(boxes) != 2:
            raise ValueError(f"two speakers need two boxes, got {len(boxes)}")
        for mask, (row_min, col_min, row_max, col_max) in zip(people, boxes):
            mask[int(row_min):int(row_max), int(col_min):int(col_max)] = 1
    else:
        # Integer truncation after float products, exactly as the official pipeline.
        half = src_w // 2
        row_min, row_max = int(src_h * face_scale), int(src_h * (1 - face_scale))
        col_min, col_max = int(half * face_scale), int(half * (1 - face_scale))
        people[0, row_min:row_max, col_min:col_max] = 1
        people[1, row_min:row_max, int(half * face_scale + half):int(half * (1 - face_scale) + half)] = 1
    background = (people.sum(0, keepdim=True) == 0).float()
    return torch.cat([people, background])


def resize_and_center_crop(masks: torch.Tensor, target_h: int, target_w: int) -> torch.Tensor:
    """[C, H, W] → [C, target_h, target_w]: nearest resize to cover the target, then centre crop.

    Scale = the larger of the two ratios, sizes rounded up; the crop offset rounds half to even
    (torchvision's center_crop), as the official resize_and_centercrop.
    """
    _, h, w = masks.shape
    scale = max(target_h / h, target_w / w)
    final_h, final_w = math.ceil(scale * h), math.ceil(scale * w)
    resized = F.interpolate(masks[None].float(), size=(final_h, final_w), mode="nearest")[0]
    top = int(round((final_h - target_h) / 2.0))
    left = int(round((final_w - target_w) / 2.0))
    return resized[:, top:top + target_h, left:left + target_w]


def latent_masks(masks: torch.Tensor, target_h: int, target_w: int, lat_h: int, lat_w: int) -> torch.Tensor:
    """Source-pixel masks → [3, lat_h, lat_w] float 0/1, the DiT's `ref_target_masks`."""
    cropped = resize_and_center_crop(masks, target_h, target_w)
    resized = F.interpolate(cropped[None], size=(lat_h, lat_w), mode="nearest")[0]
    return (resized > 0).float()


def reference_masks(src_h: int, src_w: int, target_h: int, target_w: int, lat_h: int, lat_w: int,
                    speakers: int, boxes: Sequence[Box] | None = None,
                    face_scale: float = DEFAULT_FACE_SCALE) -> torch.Tensor:
    """The full official construction: source masks → crop like the image → latent grid."""
    masks = source_masks(src_h, src_w, speakers, boxes, face_scale)
    return latent_masks(masks, target_h, target_w, lat_h, lat_w)
