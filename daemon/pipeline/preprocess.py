"""The model inputs of a MultiTalk render, built from the scene and its soundtrack.

  reference image   the composite (shared.compose) snapped to the nearest bucket of the
                    resolution preset, as the official pipeline snaps its cond_image
  person masks      from the composite's boxes (daemon.pipeline.masks), on the latent grid
  condition video   the conditioning frames (the reference image, or a clip's motion frames)
                    followed by zeros up to frame_num — what the VAE encodes into `y`
  frame mask        4 channels per latent frame marking which frames are given
  audio windows     wav2vec2 features per speaker for one clip, window of ±2 frames per frame

Audio features are computed per clip, over the clip's frames plus `context_frames` of audio on
each side, not over the whole dialogue at once as the official script does. Two reasons: a clip
then depends only on the audio near it, so editing the last line leaves earlier clips
bit-identical and the clip cache can reuse them; and memory stays bounded for any length
(wav2vec2's attention over a 10-minute track would need a [15000, 15000] map per head).
Loudness normalisation (−23 LUFS) is applied to that window, as the official code applies it to
its whole file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from daemon.models.wav2vec import (SAMPLE_RATE, VIDEO_FPS, AudioFeatureExtractor, normalize_loudness,
                                   to_video_rate, video_frame_count)
from daemon.pipeline.longvideo import VAE_TIME_STRIDE, ClipSpan, audio_source_index
from daemon.pipeline.masks import reference_masks
# The official bucket tables (ASPECT_RATIO_627 / ASPECT_RATIO_960), kept once in shared/compose
# (which sizes the composite by them); re-exported as the resolution presets of a render.
from shared.compose import BUCKETS as RESOLUTION_BUCKETS  # noqa: F401

SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS    # 640 samples of 16 kHz audio per video frame
AUDIO_WINDOW = 5                                 # official: frames −2 … +2 around each frame
VAE_SPATIAL_STRIDE = 8

Buckets = Mapping[float, tuple[int, int]]        # height/width ratio → (height, width)


# ------------------------------------------------------------------------------ image

def nearest_bucket(width: int, height: int, buckets: Buckets) -> tuple[int, int]:
    """(height, width) of the bucket whose ratio is nearest height/width (official rule)."""
    ratio = height / width
    return buckets[min(buckets, key=lambda key: abs(float(key) - ratio))]


def snap_to_bucket(image: Image.Image, buckets: Buckets) -> Image.Image:
    """The image scaled to cover its bucket (bilinear, sizes rounded up) and centre-cropped to it,
    as the official resize_and_centercrop. A composite already at a bucket size is unchanged."""
    target_h, target_w = nearest_bucket(image.width, image.height, buckets)
    if image.size == (target_w, target_h):
        return image
    scale = max(target_h / image.height, target_w / image.width)
    scaled_w, scaled_h = int(np.ceil(scale * image.width)), int(np.ceil(scale * image.height))
    scaled = image.resize((scaled_w, scaled_h), Image.Resampling.BILINEAR)
    # torchvision center_crop offsets: round half to even
    left, top = int(round((scaled_w - target_w) / 2.0)), int(round((scaled_h - target_h) / 2.0))
    return scaled.crop((left, top, left + target_w, top + target_h))


def image_to_video(image: Image.Image) -> torch.Tensor:
    """RGB image → [3, 1, H, W] float32 in [-1, 1] (p/255·2 − 1, as the official pipeline)."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    return (pixels.permute(2, 0, 1).float() / 255 * 2 - 1)[:, None]


def person_masks(boxes: Sequence[Sequence[float]], canvas: tuple[int, int], target: tuple[int, int],
                 speakers: int) -> torch.Tensor:
    """[3, H/8, W/8] float 0/1 masks (person 1, person 2, background) for `speakers` people.

    boxes are the composite's [row_min, col_min, row_max, col_max] in canvas pixels; canvas and
    target are (width, height) of the composite and of the snapped reference image.
    """
    (canvas_w, canvas_h), (target_w, target_h) = canvas, target
    return reference_masks(canvas_h, canvas_w, target_h, target_w,
                           target_h // VAE_SPATIAL_STRIDE, target_w // VAE_SPATIAL_STRIDE,
                           speakers, boxes if speakers == 2 else None)


# ------------------------------------------------------------------------------ conditioning

def condition_video(frames: torch.Tensor, frame_num: int) -> torch.Tensor:
    """Conditioning frames [3, m, H, W] followed by zeros → [3, frame_num, H, W]."""
    given = frames.shape[1]
    if given > frame_num:
        raise ValueError(f"{given} conditioning frames do not fit in a {frame_num}-frame clip")
    padding = frames.new_zeros(3, frame_num - given, *frames.shape[2:])
    return torch.cat([frames, padding], dim=1)


def frame_mask(given_frames: int, frame_num: int, lat_h: int, lat_w: int) -> torch.Tensor:
    """[4, F_lat, lat_h, lat_w]: 1 where the video frame is given as condition.

    Official layout: the per-frame mask with frame 0 repeated 4 times, grouped by 4 — latent
    frame j ≥ 1, channel c ↔ video frame 4(j − 1) + 1 + c; latent frame 0 ↔ frame 0.
    """
    per_frame = (torch.arange(frame_num) < given_frames).float()
    expanded = torch.cat([per_frame[:1].repeat(VAE_TIME_STRIDE), per_frame[1:]])
    mask = expanded.view(-1, VAE_TIME_STRIDE).t()                      # [4, F_lat]
    return mask[:, :, None, None].expand(-1, -1, lat_h, lat_w).contiguous()


# ------------------------------------------------------------------------------ audio

@dataclass(frozen=True)
class ClipAudio:
    """One clip's audio condition and exactly what it was computed from."""
    windows: torch.Tensor           # [speakers, frame_num, 5, layers, channels]
    first_frame: int                # the feature window [first_frame, stop_frame) of audio
    stop_frame: int
    index: torch.Tensor             # [frame_num, 5] feature frames each window reads
    samples: list[np.ndarray]       # per speaker, the 16 kHz samples of that window


def clip_audio(extractor: AudioFeatureExtractor, tracks: Sequence[np.ndarray], span: ClipSpan,
               context_frames: int) -> ClipAudio:
    """wav2vec2 windows of every speaker for one clip (see the module docstring).

    tracks: one float32 16 kHz track per speaker, all the same length (the soundtrack's).
    """
    feature_frames = video_frame_count(len(tracks[0]))
    index = audio_source_index(span, feature_frames, AUDIO_WINDOW)
    first = max(0, int(index.min()) - context_frames)
    stop = min(feature_frames, int(index.max()) + 1 + context_frames)
    samples = [np.ascontiguousarray(track[first * SAMPLES_PER_FRAME:stop * SAMPLES_PER_FRAME],
                                    dtype=np.float32) for track in tracks]
    windows = []
    for speaker_samples in samples:
        features = window_features(extractor, speaker_samples, stop - first)   # [frames, L, C]
        windows.append(features[(index - first).to(features.device)])
    return ClipAudio(torch.stack(windows), first, stop, index, samples)


def window_features(extractor: AudioFeatureExtractor, samples: np.ndarray, frames: int) -> torch.Tensor:
    """`extractor.features` with the frame count given rather than derived: int(N/16000·25) in
    floating point gives k − 1 for some whole k·640 sample windows (29·640, for one)."""
    values = extractor.input_values(normalize_loudness(samples))
    return extractor.encode(to_video_rate(extractor.conv_features(values), frames))
