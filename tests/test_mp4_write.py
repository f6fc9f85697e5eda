"""daemon.media.mp4: H.264/AAC MP4 writing, audio replacement, concatenation and probing."""
from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from daemon.media.mp4 import (
    MediaError,
    concat_mp4,
    ffmpeg_exe,
    frame_count,
    mux_audio,
    probe,
    write_mp4,
    write_video,
)
from daemon.pipeline.progress import Cancelled

RATE = 24000
SIZE = (320, 240)


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def solid_frames(count: int, colour: tuple[int, int, int], size=SIZE):
    width, height = size
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = colour
    for _ in range(count):
        yield frame


def decode_frame(path: Path, index: int) -> np.ndarray:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    for i, raw in enumerate(reader):
        if i == index:
            reader.close()
            return np.frombuffer(raw, np.uint8).reshape(height, width, 3)
    raise AssertionError(f"{path} has no frame {index}")


def video_bitstream(path: Path) -> bytes:
    return subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:v:0",
                           "-c", "copy", "-f", "h264", "-"], capture_output=True, check=True).stdout


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_frame_count_is_the_ceiling_of_audio_seconds_times_fps():
    assert frame_count(24000, 24000, 25) == 25      # exactly 1 s
    assert frame_count(24001, 24000, 25) == 26      # one sample more needs one frame more
    assert frame_count(1, 24000, 25) == 1
    assert frame_count(16000 * 3, 16000, 25) == 75


def test_write_mp4_gives_exact_frames_size_rate_and_codecs(tmp_path):
    audio = tone(1.01)   # 24240 samples → ceil(25.25) = 26 frames
    n = frame_count(len(audio), RATE, 25)
    out = write_mp4(solid_frames(n, (200, 40, 40)), 25, SIZE, audio, RATE, tmp_path / "a.mp4")

    info = probe(out)
    assert n == 26
    assert (info.frames, info.width, info.height, info.fps) == (26, 320, 240, 25.0)
    assert (info.video_codec, info.audio_codec, info.audio_rate) == ("h264", "aac", 24000)
    assert info.subtitle_codec is None
    # Container duration (printed to 10 ms) is the video's 26/25 s: the audio plus < 1 frame.
    assert abs(info.duration - 1.01) <= 1 / 25
    assert info.duration == pytest.approx(26 / 25, abs=0.011)
    assert leftovers(tmp_path) == ["a.mp4"]


def test_decoded_colours_match_the_frames(tmp_path):
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[:, :160] = (220, 30, 30)
    frame[:, 160:] = (30, 200, 60)
    audio = tone(0.2)
    out = write_mp4([frame] * frame_count(len(audio), RATE, 25), 25, SIZE, audio, RATE,
                    tmp_path / "c.mp4")
    decoded = decode_frame(out, 2).astype(int)
    assert np.abs(decoded[120, 80] - (220, 30, 30)).max() <= 6
    assert np.abs(decoded[120, 240] - (30, 200, 60)).max() <= 6


def test_soft_subtitles_become_a_mov_text_track(tmp_path):
    srt = "1\n00:00:00,100 --> 00:00:00,900\nHello 你好\n\n"
    audio = tone(1.0)
    out = write_mp4(solid_frames(25, (0, 0, 0)), 25, SIZE, audio, RATE, tmp_path / "s.mp4",
                    subtitles_srt=srt)
    assert probe(out).subtitle_codec == "mov_text"
    text = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(out), "-map", "0:s:0",
                           "-f", "srt", "-"], capture_output=True, check=True).stdout.decode()
    assert "Hello 你好" in text


def test_too_few_frames_is_an_error_and_leaves_no_file(tmp_path):
    with pytest.raises(MediaError, match="frames ended after 20 of the 25"):
        write_mp4(solid_frames(20, (0, 0, 0)), 25, SIZE, tone(1.0), RATE, tmp_path / "x.mp4")
    assert leftovers(tmp_path) == []


def test_too_many_frames_is_an_error_and_leaves_no_file(tmp_path):
    with pytest.raises(MediaError, match="more than the 25 frames"):
        write_mp4(solid_frames(26, (0, 0, 0)), 25, SIZE, tone(1.0), RATE, tmp_path / "x.mp4")
    assert leftovers(tmp_path) == []


def test_an_exception_from_the_frames_propagates_and_leaves_no_file(tmp_path):
    def frames():
        yield from solid_frames(10, (9, 9, 9))
        raise Cancelled()

    old = tmp_path / "x.mp4"
    old.write_bytes(b"previous render")
    with pytest.raises(Cancelled):
        write_mp4(frames(), 25, SIZE, tone(1.0), RATE, old)
    assert old.read_bytes() == b"previous render"   # never replaced by a partial file
    assert leftovers(tmp_path) == ["x.mp4"]


def test_wrong_frame_shape_and_odd_size_are_rejected(tmp_path):
    with pytest.raises(MediaError, match=r"frame 0 is uint8 \(240, 320, 4\)"):
        write_mp4([np.zeros((240, 320, 4), np.uint8)] * 25, 25, SIZE, tone(1.0), RATE,
                  tmp_path / "x.mp4")
    with pytest.raises(MediaError, match="must be positive and even"):
        write_mp4(solid_frames(25, (0, 0, 0), (321, 240)), 25, (321, 240), tone(1.0), RATE,
                  tmp_path / "y.mp4")
    with pytest.raises(MediaError, match="audio is empty"):
        write_mp4([], 25, SIZE, np.zeros(0, np.float32), RATE, tmp_path / "z.mp4")
    assert leftovers(tmp_path) == []


def test_mux_audio_replaces_the_sound_and_copies_the_video_bitstream(tmp_path):
    silent = write_video(solid_frames(25, (50, 100, 150)), 25, SIZE, tmp_path / "v.mp4")
    assert probe(silent).audio_codec is None

    out = mux_audio(silent, tone(0.99, 16000), 16000, tmp_path / "m.mp4")   # ceil(24.75) = 25
    info = probe(out)
    assert (info.frames, info.audio_codec, info.audio_rate) == (25, "aac", 16000)
    assert video_bitstream(out) == video_bitstream(silent)


def test_mux_audio_refuses_audio_that_needs_another_frame_count(tmp_path):
    silent = write_video(solid_frames(25, (0, 0, 0)), 25, SIZE, tmp_path / "v.mp4")
    with pytest.raises(MediaError, match="has 25 frames at 25 fps but 2.000 s of audio needs 50"):
        mux_audio(silent, tone(2.0), RATE, tmp_path / "m.mp4")
    assert not (tmp_path / "m.mp4").exists()


def test_concat_joins_clips_in_order_without_reencoding(tmp_path):
    red = write_video(solid_frames(10, (220, 30, 30)), 25, SIZE, tmp_path / "1.mp4")
    blue = write_video(solid_frames(15, (30, 30, 220)), 25, SIZE, tmp_path / "2.mp4")
    joined = concat_mp4([red, blue], tmp_path / "joined.mp4")

    info = probe(joined)
    assert (info.frames, info.width, info.height) == (25, 320, 240)
    assert video_bitstream(joined) == video_bitstream(red) + video_bitstream(blue)
    assert np.abs(decode_frame(joined, 9)[100, 100].astype(int) - (220, 30, 30)).max() <= 6
    assert np.abs(decode_frame(joined, 10)[100, 100].astype(int) - (30, 30, 220)).max() <= 6


def test_ffmpeg_errors_carry_ffmpeg_own_message(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 50)
    with pytest.raises(MediaError, match="Invalid data found when processing input"):
        probe(garbage)
    with pytest.raises(MediaError, match="ffmpeg failed joining 1 clips: .*Invalid data"):
        concat_mp4([garbage], tmp_path / "joined.mp4")
    assert not (tmp_path / "joined.mp4").exists()
    with pytest.raises(MediaError, match="does not exist"):
        probe(tmp_path / "missing.mp4")


def test_unknown_x264_preset_is_refused_before_encoding(tmp_path):
    with pytest.raises(MediaError, match="x264 preset 'turbo' is not one of ultrafast"):
        write_video(solid_frames(5, (0, 0, 0)), 25, SIZE, tmp_path / "v.mp4", preset="turbo")
    assert leftovers(tmp_path) == []
