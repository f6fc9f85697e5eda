"""Long dialogues as clips: planning, the official audio tail, motion frames, frame conversion."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from daemon.pipeline.longvideo import (audio_source_index, frames_to_video, inject_motion,
                                       motion_latent_frames, padded_length, plan_clips,
                                       video_to_frames)


def test_each_clip_after_the_first_adds_56_frames_and_the_last_is_cut_to_the_dialogue():
    spans = plan_clips(200, 81, 25)
    assert [(s.start, s.overlap, s.keep) for s in spans] == [(0, 0, 81), (56, 25, 56),
                                                             (112, 25, 56), (168, 25, 7)]
    assert [s.first_new_frame for s in spans] == [0, 81, 137, 193]
    assert sum(s.keep for s in spans) == 200
    assert [s.condition_frames for s in spans] == [1, 25, 25, 25]


def test_a_dialogue_shorter_than_one_clip_is_one_cut_clip():
    (span,) = plan_clips(30, 81, 25)
    assert (span.start, span.end, span.overlap, span.keep) == (0, 81, 0, 30)


@pytest.mark.parametrize("total, clips", [(81, 1), (82, 2), (137, 2), (138, 3)])
def test_a_new_clip_starts_only_when_the_previous_one_ends_before_the_dialogue(total, clips):
    assert len(plan_clips(total, 81, 25)) == clips


def test_clip_lengths_must_suit_the_vae():
    with pytest.raises(ValueError, match="4n\\+1"):
        plan_clips(100, 80, 25)
    with pytest.raises(ValueError, match="less than frame_num"):
        plan_clips(100, 25, 25)


def test_25_motion_frames_are_7_latent_frames():
    assert [motion_latent_frames(m) for m in (1, 5, 25)] == [1, 2, 7]


def test_audio_windows_clamp_at_the_start_and_inside_a_long_dialogue():
    span = plan_clips(300, 81, 25)[0]
    index = audio_source_index(span, 300)
    assert index.shape == (81, 5)
    assert index[0].tolist() == [0, 0, 0, 1, 2]
    assert index[80].tolist() == [78, 79, 80, 81, 82]


def test_the_last_clip_reads_the_mirrored_tail_as_the_official_padding():
    # T = 100 feature frames; clip 2 covers [56, 137): the official code appends the last
    # 137 − 100 + 3 = 40 frames flipped, so padded index 100 + j reads frame 99 − j.
    span = plan_clips(100, 81, 25)[1]
    assert padded_length(span, 100) == 140
    index = audio_source_index(span, 100)
    row = lambda frame: index[frame - span.start].tolist()
    assert row(56) == [54, 55, 56, 57, 58]
    assert row(99) == [97, 98, 99, 99, 98]
    assert row(136) == [65, 64, 63, 62, 61]


def test_audio_shorter_than_the_mirror_clamps_to_the_first_frame():
    # 10 feature frames, an 81-frame clip: at most T frames are mirrored (padded length 20).
    span = plan_clips(10, 81, 25)[0]
    index = audio_source_index(span, 10)
    assert index[:, 2].tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 8]
    assert index.max().item() == 9 and index.min().item() == 0
    assert index[80].tolist() == [0, 0, 0, 0, 0]


def test_motion_latents_replace_the_head_noised_to_the_timestep():
    latent = torch.zeros(1, 16, 9, 2, 3)
    motion = torch.ones(16, 7, 2, 3)
    noise = torch.full((16, 7, 2, 3), 3.0)
    out = inject_motion(latent, motion, noise, torch.tensor([250.0]))
    # σ = 0.25: (1 − σ)·motion + σ·noise
    assert torch.allclose(out[0, :, :7], torch.full((16, 7, 2, 3), 0.75 + 0.75))
    assert torch.equal(out[0, :, 7:], latent[0, :, 7:])
    assert torch.equal(latent, torch.zeros_like(latent))            # the input is not changed


def test_frames_truncate_like_the_official_save_path_and_round_trip():
    video = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0, 1.5]).view(3, 1, 1, 2)
    frames = video_to_frames(video)
    assert frames.shape == (1, 1, 2, 3) and frames.dtype == np.uint8
    # (x + 1)/2·255 truncated: 0, 0.1275 → 0, 127.5 → 127, 254.87 → 254, 255, clipped 255
    assert frames[0, 0, :, :].T.flatten().tolist() == [0, 0, 127, 254, 255, 255]


def test_frames_become_video_as_the_reference_image_does():
    pixels = np.array([0, 51, 255], dtype=np.uint8).reshape(1, 1, 1, 3)
    video = frames_to_video(pixels)                                  # p/255·2 − 1
    assert video.shape == (3, 1, 1, 1)
    assert torch.allclose(video.flatten(), torch.tensor([-1.0, -0.6, 1.0]))
    # back through the truncating save path: at most one level lower
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 1, 256, 1).repeat(3, axis=3)
    back = video_to_frames(frames_to_video(pixels)).astype(int)
    assert ((pixels - back) >= 0).all() and ((pixels - back) <= 1).all()
