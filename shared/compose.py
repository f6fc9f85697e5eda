"""Faces → the reference image and one box per person.

The composite is the first frame the model animates (and what the draft animatic shows); the
boxes route each speaker's audio to their region (L-RoPE). Boxes use the official MultiTalk
bbox convention: [row_min, col_min, row_max, col_max] in canvas pixels, max exclusive.
Pure PIL + numpy, deterministic: the same scene always gives the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from shared.scene import (
    ASPECTS,
    Crop,
    Person,
    ProjectError,
    Scene,
    Settings,
    decode_image,
    default_placements,
)

__all__ = ["Composite", "canvas_size", "compose", "cover_box", "default_placements"]

# The official MultiTalk resolution buckets (wan/utils/multitalk_utils.py ASPECT_RATIO_627 for
# 480p, ASPECT_RATIO_960 for 720p): height/width ratio → (height, width). The model was trained
# at these sizes; the official pipeline picks the bucket whose ratio is nearest the photo's.
BUCKETS: dict[str, dict[float, tuple[int, int]]] = {
    "480p": {
        0.26: (320, 1216), 0.38: (384, 1024), 0.50: (448, 896), 0.67: (512, 768),
        0.82: (576, 704), 1.00: (640, 640), 1.22: (704, 576), 1.50: (768, 512),
        1.86: (832, 448), 2.00: (896, 448), 2.50: (960, 384), 2.83: (1088, 384),
        3.60: (1152, 320), 3.80: (1216, 320), 4.00: (1280, 320),
    },
    "720p": {
        0.22: (448, 2048), 0.29: (512, 1792), 0.36: (576, 1600), 0.45: (640, 1408),
        0.55: (704, 1280), 0.63: (768, 1216), 0.76: (832, 1088), 0.88: (896, 1024),
        1.00: (960, 960), 1.14: (1024, 896), 1.31: (1088, 832), 1.50: (1152, 768),
        1.58: (1216, 768), 1.82: (1280, 704), 1.91: (1344, 704), 2.20: (1408, 640),
        2.30: (1472, 640), 2.67: (1536, 576), 2.89: (1664, 576), 3.62: (1856, 512),
        3.75: (1920, 512),
    },
}

BLUR_RADIUS_FRACTION = 0.03  # of the canvas's longer side: soft enough to read as backdrop

Box = tuple[int, int, int, int]  # row_min, col_min, row_max, col_max


@dataclass(frozen=True)
class Composite:
    image: Image.Image  # RGB, canvas_size(settings)
    boxes: list[Box]  # one per cast member, in cast order


def canvas_size(settings: Settings) -> tuple[int, int]:
    """(width, height) of the official bucket nearest the aspect: 480p 16:9 → 896×448,
    9:16 → 448×832, 1:1 → 640×640, 4:3 → 704×576, 3:4 → 576×704; 720p 16:9 → 1280×704,
    9:16 → 704×1280, 1:1 → 960×960, 4:3 → 1088×832, 3:4 → 832×1088."""
    buckets = BUCKETS[settings.resolution]
    ratio = 1.0 / ASPECTS[settings.aspect]  # buckets are keyed by height / width
    height, width = buckets[min(buckets, key=lambda key: abs(key - ratio))]
    return width, height


def compose(scene: Scene) -> Composite:
    """Draw the background, then each person with a portrait (in cast order, later ones in
    front); persons without one stand in the background photo."""
    width, height = canvas_size(scene.settings)
    background = scene.background
    photo = None
    if background.kind == "image":
        if background.image is None:
            raise ProjectError('background.image: is missing; kind "image" needs a photo')
        photo = decode_image(background.image, "background.image")
    canvas = _background(scene, photo, width, height)
    boxes: list[Box] = []
    for i, person in enumerate(scene.cast):
        if person.image is not None:
            boxes.append(_paste_portrait(canvas, person, f"cast[{i}].image"))
            continue
        if photo is None:
            raise ProjectError(f"cast[{i}].image: is missing and there is no group photo "
                               '(background.kind "image") for this person to stand in')
        box = cover_box(person.crop, photo.size, (width, height))
        if box[0] >= box[2] or box[1] >= box[3]:
            raise ProjectError(f"cast[{i}].crop: this person lies outside the {width}×{height} "
                               "canvas once the photo is cropped to it; choose an aspect "
                               "closer to the photo's")
        boxes.append(box)
    return Composite(image=canvas, boxes=boxes)


def _background(scene: Scene, photo: Image.Image | None, width: int, height: int) -> Image.Image:
    background = scene.background
    if background.kind == "color":
        return Image.new("RGB", (width, height), background.color)
    if background.kind == "image" and photo is not None:
        return _cover(_flatten(photo, background.color), width, height)
    if background.kind == "blur":
        first = next((i for i, p in enumerate(scene.cast) if p.image is not None), None)
        if first is None:
            raise ProjectError('background.kind: "blur" needs at least one portrait')
        portrait = decode_image(scene.cast[first].image, f"cast[{first}].image")
        portrait = _flatten(portrait, background.color)
        radius = BLUR_RADIUS_FRACTION * max(width, height)
        return _cover(portrait, width, height).filter(ImageFilter.GaussianBlur(radius))
    raise ProjectError(f"background.kind: {background.kind!r} is not one of color, blur, image")


def _paste_portrait(canvas: Image.Image, person: Person, field_path: str) -> Box:
    portrait = decode_image(person.image, field_path)
    source_width, source_height = portrait.size
    crop = person.crop
    left = round(crop.x * source_width)
    top = round(crop.y * source_height)
    right = max(left + 1, round((crop.x + crop.w) * source_width))
    bottom = max(top + 1, round((crop.y + crop.h) * source_height))
    face = portrait.crop((left, top, right, bottom))

    canvas_width, canvas_height = canvas.size
    placement = person.placement
    target_height = max(1, round(placement.height * canvas_height))
    target_width = max(1, round(face.width * target_height / face.height))
    face = face.resize((target_width, target_height), Image.Resampling.LANCZOS)
    col = round(placement.cx * canvas_width - target_width / 2)
    row = round(placement.cy * canvas_height - target_height / 2)
    if face.mode == "RGBA":
        canvas.paste(face.convert("RGB"), (col, row), mask=face.getchannel("A"))
    else:
        canvas.paste(face, (col, row))
    return (
        max(0, row),
        max(0, col),
        min(canvas_height, row + target_height),
        min(canvas_width, col + target_width),
    )


def cover_box(crop: Crop, photo_size: tuple[int, int], canvas: tuple[int, int]) -> Box:
    """A box in the photo (as fractions) mapped through the cover transform onto the canvas,
    covering exactly the canvas pixels an official nearest-neighbour resize of the person's
    mask would set (wan/multitalk.py: resize_and_centercrop on the masks)."""
    photo_width, photo_height = photo_size
    width, height = canvas
    scaled_width, scaled_height = _cover_size(photo_width, photo_height, width, height)
    left, top = _center_crop_offset(scaled_width, scaled_height, width, height)
    # The official mask is set on whole source pixels [int(min), int(max)).
    row_min, row_max = round(crop.y * photo_height), round((crop.y + crop.h) * photo_height)
    col_min, col_max = round(crop.x * photo_width), round((crop.x + crop.w) * photo_width)
    rows = _nearest_span(row_min, row_max, photo_height, scaled_height)
    cols = _nearest_span(col_min, col_max, photo_width, scaled_width)
    return (
        min(max(rows[0] - top, 0), height),
        min(max(cols[0] - left, 0), width),
        min(max(rows[1] - top, 0), height),
        min(max(cols[1] - left, 0), width),
    )


def _nearest_span(start: int, stop: int, size: int, scaled: int) -> tuple[int, int]:
    """Output indices [first, last + 1) whose nearest source index (torch 'nearest':
    floor(i · size/scaled) in float32) lies in [start, stop)."""
    source = np.floor(np.arange(scaled, dtype=np.float32) * np.float32(size / scaled))
    inside = np.flatnonzero((source >= start) & (source < stop))
    if inside.size == 0:
        return (0, 0)
    return int(inside[0]), int(inside[-1]) + 1


def _cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover the canvas and centre-crop, as the official pipeline treats its
    cond_image (bilinear resize to the ceil'd cover size, then a centre crop)."""
    scaled_width, scaled_height = _cover_size(image.width, image.height, width, height)
    scaled = image.resize((scaled_width, scaled_height), Image.Resampling.BILINEAR)
    left, top = _center_crop_offset(scaled_width, scaled_height, width, height)
    return scaled.crop((left, top, left + width, top + height))


def _cover_size(source_width: int, source_height: int, width: int,
                height: int) -> tuple[int, int]:
    # Same float steps as the official resize_and_centercrop, so sizes agree to the pixel.
    scale = max(height / source_height, width / source_width)
    return math.ceil(scale * source_width), math.ceil(scale * source_height)


def _center_crop_offset(scaled_width: int, scaled_height: int, width: int,
                        height: int) -> tuple[int, int]:
    # torchvision center_crop: int(round((size - crop) / 2.0)) (round half to even)
    return int(round((scaled_width - width) / 2.0)), int(round((scaled_height - height) / 2.0))


def _flatten(image: Image.Image, color: str) -> Image.Image:
    """RGBA → RGB on the background colour; RGB unchanged."""
    if image.mode != "RGBA":
        return image
    flat = Image.new("RGB", image.size, color)
    flat.paste(image.convert("RGB"), (0, 0), mask=image.getchannel("A"))
    return flat
