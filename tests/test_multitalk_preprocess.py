"""Model inputs from the scene: the reference image, masks, conditioning, audio windows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from daemon.models.wav2vec import AudioFeatureExtractor
from daemon.pipeline.longvideo import plan_clips
from daemon.pipeline.preprocess import (RESOLUTION_BUCKETS, clip_audio, condition_video,
                                        frame_mask, image_to_video, nearest_bucket, person_masks,
                                        snap_to_bucket, window_features)
from shared.compose import canvas_size
from shared.scene import ASPECTS, Settings

WAV2VEC = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "multitalk-tiny" / \
    "chinese-wav2vec2-base"


@pytest.mark.parametrize("size, bucket", [((896, 448), (448, 896)), ((832, 480), (448, 896)),
                                          ((640, 640), (640, 640)), ((480, 832), (832, 448))])
def test_480p_buckets_are_the_official_627_table(size, bucket):
    assert nearest_bucket(*size, RESOLUTION_BUCKETS["480p"]) == bucket


def test_every_canvas_is_already_a_bucket_of_its_preset():
    for resolution in ("480p", "720p"):
        for aspect in ASPECTS:
            width, height = canvas_size(Settings(resolution=resolution, aspect=aspect))
            assert nearest_bucket(width, height, RESOLUTION_BUCKETS[resolution]) == (height, width)


def test_snapping_covers_the_bucket_and_crops_the_centre():
    image = Image.new("RGB", (1000, 400), (0, 0, 255))
    image.paste((255, 0, 0), (450, 150, 550, 250))                     # a red centre square
    snapped = snap_to_bucket(image, RESOLUTION_BUCKETS["480p"])
    assert snapped.size == (1024, 384)                                 # ratio 0.4 → 0.38 bucket
    assert snapped.getpixel((512, 192)) == (255, 0, 0)
    exact = Image.new("RGB", (896, 448))
    assert snap_to_bucket(exact, RESOLUTION_BUCKETS["480p"]) is exact


def test_the_image_becomes_a_one_frame_video_in_minus_one_to_one():
    image = Image.new("RGB", (16, 8), (0, 255, 51))
    video = image_to_video(image)
    assert video.shape == (3, 1, 8, 16)
    assert video[:, 0, 0, 0].tolist() == pytest.approx([-1.0, 1.0, -0.6])


def _official_frame_mask(given: int, frame_num: int) -> torch.Tensor:
    """wan/multitalk.py: ones, zero from `given` on, frame 0 repeated 4×, grouped by 4."""
    msk = torch.ones(1, frame_num, 1, 1)
    msk[:, given:] = 0
    msk = torch.concat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    return msk.view(1, msk.shape[1] // 4, 4, 1, 1).transpose(1, 2)[0]


@pytest.mark.parametrize("given, frame_num", [(1, 81), (25, 81), (5, 29), (2, 9)])
def test_frame_mask_has_the_official_layout(given, frame_num):
    mask = frame_mask(given, frame_num, 3, 5)
    assert mask.shape == (4, (frame_num - 1) // 4 + 1, 3, 5)
    assert torch.equal(mask[:, :, :1, :1], _official_frame_mask(given, frame_num))


def test_25_given_frames_mark_7_whole_latent_frames():
    mask = frame_mask(25, 81, 1, 1)[:, :, 0, 0]
    assert mask[:, :7].eq(1).all() and mask[:, 7:].eq(0).all()


def test_the_condition_video_is_the_given_frames_then_zeros():
    frames = torch.ones(3, 2, 4, 4)
    video = condition_video(frames, 9)
    assert video.shape == (3, 9, 4, 4)
    assert video[:, :2].eq(1).all() and video[:, 2:].eq(0).all()
    with pytest.raises(ValueError, match="do not fit"):
        condition_video(torch.ones(3, 10, 4, 4), 9)


def test_person_masks_come_from_the_composite_boxes_at_latent_size():
    # canvas 64×32 = target: boxes rows 8–24, cols 0–24 and 40–64
    masks = person_masks([(8, 0, 24, 24), (8, 40, 24, 64)], (64, 32), (64, 32), speakers=2)
    assert masks.shape == (3, 4, 8)
    assert masks[0].nonzero().tolist() == [[1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 2]]
    assert masks[1].nonzero()[:, 1].unique().tolist() == [5, 6, 7]
    assert torch.equal(masks[2], 1 - masks[0] - masks[1])
    assert torch.equal(person_masks([(0, 0, 1, 1)], (64, 32), (64, 32), speakers=1),
                       torch.ones(3, 4, 8))


# ------------------------------------------------------------------------------ audio

@pytest.fixture(scope="module")
def extractor() -> AudioFeatureExtractor:
    if not WAV2VEC.is_dir():
        pytest.skip(f"{WAV2VEC} not present")
    return AudioFeatureExtractor(WAV2VEC)


def _speech(seconds: float, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    t = np.arange(round(seconds * 16000)) / 16000
    return (0.2 * np.sin(2 * np.pi * 200 * t) * (1 + g.standard_normal(t.size) * 0.1)).astype(np.float32)


def test_window_features_have_exactly_the_frames_asked_for(extractor):
    # int(29·640 / 16000 · 25) is 28 in floating point; the window still gets 29 frames
    assert extractor.features(_speech(29 * 640 / 16000, 0)).shape[0] == 28
    assert window_features(extractor, _speech(29 * 640 / 16000, 0), 29).shape[0] == 29


def test_clip_audio_reads_its_window_plus_context_and_nothing_further(extractor):
    tracks = [_speech(6.0, 1), _speech(6.0, 2)]                      # 150 feature frames
    span = plan_clips(150, 29, 5)[1]                                  # frames 24–52
    audio = clip_audio(extractor, tracks, span, context_frames=8)
    assert audio.windows.shape == (2, 29, 5, extractor.num_layers, extractor.hidden_size)
    assert (audio.first_frame, audio.stop_frame) == (14, 63)         # 22 − 8, 54 + 1 + 8
    assert [len(s) for s in audio.samples] == [49 * 640, 49 * 640]

    # Audio outside the window changes nothing; audio inside it does.
    far = [t.copy() for t in tracks]
    far[0][70 * 640:] = 0
    assert torch.equal(clip_audio(extractor, far, span, 8).windows, audio.windows)
    near = [t.copy() for t in tracks]
    near[0][40 * 640:41 * 640] = 0
    assert not torch.equal(clip_audio(extractor, near, span, 8).windows, audio.windows)
