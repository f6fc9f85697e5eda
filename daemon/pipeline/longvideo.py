"""Long dialogues as a chain of clips, the way the official streaming mode makes them.

MultiTalk generates `frame_num` frames (81: 3.24 s at 25 fps) at a time. The first clip starts
from the reference image; every later clip starts from the last `motion_frames` (25) frames of
the one before — re-encoded by the VAE into 1 + (25−1)/4 = 7 latent frames that overwrite the
head of the noisy latent, re-noised to the current timestep at every step — and contributes only
the frames after them (81 − 25 = 56 new frames). Clip k therefore covers video (and audio)
frames [56k, 56k + 81).

The audio tail: the last clip runs past the end of the dialogue. The official pipeline then
extends the features by mirroring the last frames (flip of the last `end − T + 3` frames, T the
feature count) and cuts the surplus video; so do we (`audio_source_index`), and the video is cut
to exactly the frames the dialogue's audio covers. Unlike the official code there is no frame
cap (it stops at 1000 frames) and no minimum length (it refuses audio under 81 frames).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from daemon.pipeline.sampler import add_noise

MOTION_FRAMES = 25       # official --motion_frame
VAE_TIME_STRIDE = 4      # video frames per latent frame after the first


@dataclass(frozen=True)
class ClipSpan:
    """Where one clip sits in the video."""
    index: int              # 0-based
    start: int              # first video frame the clip covers (its audio starts there too)
    frame_num: int          # frames the clip generates, 4n+1
    overlap: int            # leading frames that repeat the previous clip's last frames
    keep: int               # frames after the overlap that go into the video (the tail is cut)

    @property
    def end(self) -> int:
        return self.start + self.frame_num

    @property
    def condition_frames(self) -> int:
        """Pixel frames given as condition: the reference image, or the motion frames."""
        return max(self.overlap, 1)

    @property
    def first_new_frame(self) -> int:
        """Index in the whole video of the first frame this clip adds."""
        return self.start + self.overlap


def plan_clips(total_frames: int, frame_num: int, motion_frames: int = MOTION_FRAMES) -> list[ClipSpan]:
    """The clips that cover `total_frames` video frames: the first adds frame_num frames, each
    later one frame_num − motion_frames; the last one's surplus is cut (`keep`)."""
    if total_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {total_frames}")
    if frame_num < 5 or (frame_num - 1) % VAE_TIME_STRIDE:
        raise ValueError(f"frame_num {frame_num} must be 4n+1 and at least 5")
    if not 0 < motion_frames < frame_num or (motion_frames - 1) % VAE_TIME_STRIDE:
        raise ValueError(f"motion_frames {motion_frames} must be 4n+1 and less than frame_num "
                         f"{frame_num}")
    stride = frame_num - motion_frames
    count = 1 if total_frames <= frame_num else 1 + math.ceil((total_frames - frame_num) / stride)
    spans = []
    for k in range(count):
        start = k * stride
        overlap = 0 if k == 0 else motion_frames
        keep = min(frame_num - overlap, total_frames - start - overlap)
        spans.append(ClipSpan(index=k, start=start, frame_num=frame_num, overlap=overlap, keep=keep))
    return spans


def motion_latent_frames(motion_frames: int) -> int:
    """Latent frames the VAE makes of `motion_frames` pixel frames (25 → 7)."""
    return 1 + (motion_frames - 1) // VAE_TIME_STRIDE


# ------------------------------------------------------------------------------ audio windows

def padded_length(span: ClipSpan, feature_frames: int) -> int:
    """Length of the official feature sequence while this clip is made: T, or — once the clip
    reaches the end — T plus the mirrored tail of end − T + 3 frames (at most T of them)."""
    if span.end < feature_frames:
        return feature_frames
    return feature_frames + min(span.end - feature_frames + 3, feature_frames)


def audio_source_index(span: ClipSpan, feature_frames: int, window: int = 5) -> torch.Tensor:
    """[frame_num, window] int64: for each frame of the clip, the feature frames of its audio
    window (frame ± window//2), as indices into the real (unpadded) features.

    Official semantics: indices are clamped to the (padded) sequence, and a padded index
    T + j reads the mirrored frame T − 1 − j.
    """
    if feature_frames < 1:
        raise ValueError("the dialogue has no audio frames")
    limit = padded_length(span, feature_frames)
    offsets = torch.arange(window) - window // 2
    centres = torch.arange(span.start, span.end)
    index = (centres[:, None] + offsets[None, :]).clamp(0, limit - 1)
    mirrored = (2 * feature_frames - 1 - index).clamp_min(0)
    return torch.where(index < feature_frames, index, mirrored)


# ------------------------------------------------------------------------------ motion frames

def inject_motion(latent: torch.Tensor, motion_latent: torch.Tensor, noise: torch.Tensor,
                  t: torch.Tensor) -> torch.Tensor:
    """The head of `latent` [B, C, F, h, w] replaced by the motion latent [C, Fm, h, w] noised to
    timestep t (official: at the start and after every step, with fresh noise each time)."""
    frames = motion_latent.shape[1]
    latent = latent.clone()
    latent[:, :, :frames] = add_noise(motion_latent, noise, t).to(latent.dtype)
    return latent


def frames_to_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] → video [3, T, H, W] float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 255 * 2 - 1


def video_to_frames(video: torch.Tensor) -> np.ndarray:
    """video [3, T, H, W] in [-1, 1] → uint8 frames [T, H, W, 3].

    Truncation, not rounding, as the official save path ((x+1)/2·255 → astype(uint8)).
    """
    scaled = ((video.float() + 1) / 2 * 255).clamp(0, 255)
    return scaled.to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu().numpy()
