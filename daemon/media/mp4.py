"""MP4 files: encode frames + audio to H.264/AAC, replace audio, concatenate clips, probe.

Everything runs through the static ffmpeg that imageio-ffmpeg bundles (libx264, aac, mov_text,
libass; no ffprobe). Frames are streamed to ffmpeg's stdin one by one, never held all at once.

Duration rule, shared by every function here: audio of `samples` samples at `rate` Hz is covered
by `frame_count(samples, rate, fps)` = ceil(samples·fps / rate) frames. The MP4 lasts exactly
frames / fps seconds: the audio is padded with silence by less than one frame so that both
streams end together (no `-shortest`, which can drop the last frame).

Outputs are written to a hidden temporary file beside `out_path` and renamed into place only when
ffmpeg succeeded, so a reader never sees a half-written MP4 and a failed or cancelled job leaves
nothing behind.
"""
from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import imageio_ffmpeg
import numpy as np
import soundfile

# veryfast/CRF 20: visually clean at 480p/720p and several times faster than x264's default
# "medium". x264 spends about the same time on every frame, changed or not (~3 ms for 896x448 at
# veryfast on one core, ~1.6 ms at ultrafast, whose files are ~3x larger): callers that need
# speed over size, like the draft animatic, pass preset="ultrafast".
DEFAULT_PRESET = "veryfast"
CRF = "20"
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
# Frames reach ffmpeg as yuv420p (most players cannot decode 4:4:4 H.264), converted by OpenCV —
# BT.601 matrix, limited range, which the stream is tagged with — because that is ~6x cheaper
# than ffmpeg's own rgb24 conversion (0.3 vs 1.7 ms a 896x448 frame).
COLOUR_TAGS = ["-colorspace", "smpte170m", "-color_range", "tv"]
AUDIO_CODEC_ARGS = ["-c:a", "aac", "-b:a", "128k"]
# The index (moov atom) goes first so that browsers can start playing while downloading.
CONTAINER_ARGS = ["-movflags", "+faststart", "-f", "mp4"]

STDERR_TAIL_LINES = 12
PIPE_BYTES = 1 << 20


class MediaError(RuntimeError):
    """ffmpeg failed or a media file/argument is unusable; the message says what and why."""


@dataclass(frozen=True)
class MediaInfo:
    """What `probe` reads from a file. Numbers of a missing stream are 0, its codec None."""
    duration: float            # seconds, container duration (ffmpeg prints it to 10 ms)
    width: int
    height: int
    fps: float
    frames: int                # video frames, counted packet by packet (no decoding)
    video_codec: str | None    # e.g. "h264"
    audio_codec: str | None    # e.g. "aac"
    audio_rate: int
    subtitle_codec: str | None = None   # e.g. "mov_text"


def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def frame_count(samples: int, rate: int, fps: int) -> int:
    """Frames needed to cover `samples` audio samples: ceil(samples·fps / rate), in integers."""
    return -(-samples * fps // rate)


def write_mp4(frames: Iterable[np.ndarray], fps: int, size: tuple[int, int], audio: np.ndarray,
              audio_rate: int, out_path: Path, subtitles_srt: str | None = None, *,
              preset: str = DEFAULT_PRESET) -> Path:
    """Encode `frames` (uint8 H×W×3 RGB) with `audio` (float32 mono) into an H.264/AAC MP4.

    `frames` must yield exactly frame_count(len(audio), audio_rate, fps) frames (see the module
    docstring); each frame is written to ffmpeg before the next is requested, so a generator may
    reuse one buffer. A read-only frame yielded again as the same object is taken as unchanged
    and not converted again. `subtitles_srt` (SRT text) becomes a soft mov_text subtitle track;
    `preset` is the x264 speed/size trade-off.
    An exception raised by the frame iterator (e.g. Cancelled) stops ffmpeg, removes the partial
    output and propagates unchanged.
    """
    width, height = _check_size(size)
    _check_fps(fps)
    audio = _check_audio(audio, audio_rate)
    expected = frame_count(len(audio), audio_rate, fps)
    # Pad with silence so the audio ends exactly where the last frame does.
    padded_len = -(-expected * audio_rate // fps)
    audio = np.concatenate([audio, np.zeros(padded_len - len(audio), np.float32)])

    with tempfile.TemporaryDirectory(prefix="duet-mp4-") as tmp:
        wav = Path(tmp) / "audio.wav"
        soundfile.write(wav, audio, audio_rate, subtype="FLOAT")
        inputs = ["-i", str(wav)]
        maps = ["-map", "0:v:0", "-map", "1:a:0"]
        subtitle_args: list[str] = []
        if subtitles_srt is not None and subtitles_srt.strip():
            srt = Path(tmp) / "subtitles.srt"
            srt.write_text(subtitles_srt, encoding="utf-8")
            inputs += ["-i", str(srt)]
            maps += ["-map", "2:s:0"]
            subtitle_args = ["-c:s", "mov_text"]
        with _atomic_output(out_path) as tmp_out:
            _encode_frames(frames, fps, width, height, expected, inputs,
                           maps + _video_codec_args(preset) + AUDIO_CODEC_ARGS + subtitle_args,
                           tmp_out, Path(tmp) / "stderr.txt")
    return out_path


def write_video(frames: Iterable[np.ndarray], fps: int, size: tuple[int, int],
                out_path: Path, *, preset: str = DEFAULT_PRESET) -> Path:
    """Encode all `frames` (uint8 H×W×3 RGB) into a video-only H.264 MP4 — a clip of a longer
    render, to be joined with `concat_mp4` and given its sound with `mux_audio`."""
    width, height = _check_size(size)
    _check_fps(fps)
    output_args = ["-map", "0:v:0", *_video_codec_args(preset)]
    with tempfile.TemporaryDirectory(prefix="duet-mp4-") as tmp:
        with _atomic_output(out_path) as tmp_out:
            _encode_frames(frames, fps, width, height, None, [], output_args, tmp_out,
                           Path(tmp) / "stderr.txt")
    return out_path


def mux_audio(video_path: Path, audio: np.ndarray, rate: int, out_path: Path) -> Path:
    """Copy the video (and any subtitle) streams of `video_path` unchanged and give them `audio`
    (float32 mono) encoded as AAC, replacing any audio the file had. The video must have
    frame_count(len(audio), rate, fps) frames, the same rule as `write_mp4`."""
    info = probe(video_path)
    if not info.frames:
        raise MediaError(f"{video_path} has no video stream to put audio under")
    audio = _check_audio(audio, rate)
    fps = round(info.fps)
    needed = frame_count(len(audio), rate, fps)
    if needed != info.frames:
        raise MediaError(
            f"{video_path} has {info.frames} frames at {fps} fps but {len(audio) / rate:.3f} s of "
            f"audio needs {needed}: render frame_count(samples, rate, fps) frames")
    padded_len = -(-info.frames * rate // fps)
    audio = np.concatenate([audio, np.zeros(padded_len - len(audio), np.float32)])
    with tempfile.TemporaryDirectory(prefix="duet-mp4-") as tmp:
        wav = Path(tmp) / "audio.wav"
        soundfile.write(wav, audio, rate, subtype="FLOAT")
        with _atomic_output(out_path) as tmp_out:
            _run_ffmpeg(["-i", str(video_path), "-i", str(wav),
                         "-map", "0:v:0", "-map", "1:a:0", "-map", "0:s?",
                         "-c:v", "copy", "-c:s", "copy", *AUDIO_CODEC_ARGS, *CONTAINER_ARGS,
                         str(tmp_out)], what=f"replacing the audio of {video_path}")
    return out_path


def concat_mp4(paths: list[Path], out_path: Path) -> Path:
    """Join MP4 clips end to end without re-encoding (ffmpeg's concat demuxer, stream copy).

    The clips must share codecs, size and frame rate, as clips from `write_video` of one render
    do. AAC audio does not join seamlessly (each clip carries encoder priming), so join
    video-only clips and add the sound once with `mux_audio`."""
    if not paths:
        raise MediaError("concat_mp4 needs at least one clip")
    for path in paths:
        if not Path(path).is_file():
            raise MediaError(f"clip {path} does not exist")
    with tempfile.TemporaryDirectory(prefix="duet-mp4-") as tmp:
        listing = Path(tmp) / "clips.txt"
        # concat demuxer syntax: single-quoted paths, a quote written as '\''
        listing.write_text("".join(
            "file '" + str(Path(p).resolve()).replace("'", "'\\''") + "'\n" for p in paths),
            encoding="utf-8")
        with _atomic_output(out_path) as tmp_out:
            _run_ffmpeg(["-f", "concat", "-safe", "0", "-i", str(listing), "-map", "0",
                         "-c", "copy", *CONTAINER_ARGS, str(tmp_out)],
                        what=f"joining {len(paths)} clips")
    return out_path


def probe(path: Path) -> MediaInfo:
    """Streams, size, frame rate, duration and exact frame count of a media file.

    The bundled ffmpeg has no ffprobe: the stream summary is parsed from `ffmpeg -i`, and frames
    are counted by stream-copying the video to the null muxer (reads packets, decodes nothing)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path} does not exist")
    header = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                            capture_output=True, text=True, errors="replace").stderr
    # Without an output ffmpeg always exits 1; an unreadable input has no "Input #0" summary.
    if "Input #0" not in header:
        raise MediaError(f"ffmpeg cannot read {path}: {_tail(header)}")

    duration = 0.0
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", header)
    if m:
        duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])

    width = height = frames = audio_rate = 0
    fps = 0.0
    video_codec = audio_codec = subtitle_codec = None
    for line in header.splitlines():
        stream = re.match(r"\s*Stream #0:\d+\S*: (Video|Audio|Subtitle): (\w+)", line)
        if not stream:
            continue
        kind, codec = stream[1], stream[2]
        if kind == "Video" and video_codec is None:
            video_codec = codec
            size = re.search(r", (\d+)x(\d+)", line)
            if size:
                width, height = int(size[1]), int(size[2])
            rate = re.search(r", ([\d.]+)(k?) fps", line)
            if rate:
                fps = float(rate[1]) * (1000 if rate[2] else 1)
        elif kind == "Audio" and audio_codec is None:
            audio_codec = codec
            hz = re.search(r", (\d+) Hz", line)
            if hz:
                audio_rate = int(hz[1])
        elif kind == "Subtitle" and subtitle_codec is None:
            subtitle_codec = codec

    if video_codec is not None:
        counted = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
             "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "null", "-",
             "-progress", "pipe:1"],
            capture_output=True, text=True, errors="replace")
        counts = re.findall(r"^frame=(\d+)$", counted.stdout, flags=re.MULTILINE)
        if counted.returncode != 0 or not counts:
            raise MediaError(f"ffmpeg cannot count the frames of {path}: {_tail(counted.stderr)}")
        frames = int(counts[-1])

    return MediaInfo(duration=duration, width=width, height=height, fps=fps, frames=frames,
                     video_codec=video_codec, audio_codec=audio_codec, audio_rate=audio_rate,
                     subtitle_codec=subtitle_codec)


# ---------------------------------------------------------------------------------------------

def _video_codec_args(preset: str) -> list[str]:
    if preset not in X264_PRESETS:
        raise MediaError(f"x264 preset {preset!r} is not one of {', '.join(X264_PRESETS)}")
    return ["-c:v", "libx264", "-preset", preset, "-crf", CRF, *COLOUR_TAGS]


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    # yuv420p stores colour at half resolution in both directions.
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise MediaError(f"video size {width}x{height} must be positive and even (yuv420p)")
    return width, height


def _check_fps(fps: int) -> None:
    # Whole frame rates only: frame_count's integer arithmetic relies on it.
    if not isinstance(fps, int) or fps <= 0:
        raise MediaError(f"fps {fps!r} must be a positive whole number")


def _check_audio(audio: np.ndarray, rate: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise MediaError(f"audio must be mono (1-D), got shape {audio.shape}")
    if len(audio) == 0:
        raise MediaError("audio is empty: a video needs at least one sample of sound to time it")
    if rate <= 0:
        raise MediaError(f"audio rate {rate} must be positive")
    if not np.isfinite(audio).all():
        raise MediaError("audio contains NaN or infinite samples")
    return audio


@contextmanager
def _atomic_output(out_path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `out_path`; rename it into place if the block succeeds."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        yield tmp
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)


def _encode_frames(frames: Iterable[np.ndarray], fps: int, width: int, height: int,
                   expected: int | None, extra_inputs: list[str], output_args: list[str],
                   out: Path, stderr_path: Path) -> None:
    """Pipe RGB frames into ffmpeg as I420; `expected` frames exactly, or any number if None."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{width}x{height}",
           "-framerate", str(fps), "-i", "pipe:0", *extra_inputs, *output_args,
           *CONTAINER_ARGS, str(out)]
    shape = (height, width, 3)
    written = 0
    previous: np.ndarray | None = None
    yuv = np.empty(0, np.uint8)
    ffmpeg_died = False
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=stderr)
        _widen_pipe(proc.stdin)
        try:
            for frame in frames:
                if expected is not None and written == expected:
                    raise MediaError(f"got more than the {expected} frames that the audio "
                                     f"needs at {fps} fps: render frame_count(samples, rate, fps)")
                if frame.shape != shape or frame.dtype != np.uint8:
                    raise MediaError(f"frame {written} is {frame.dtype} {frame.shape}; "
                                     f"expected uint8 {shape}")
                if frame is not previous or frame.flags.writeable:
                    # [H*3/2, W]: the Y plane, then U and V at half size (I420)
                    yuv = cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420)
                    previous = frame
                try:
                    proc.stdin.write(memoryview(yuv).cast("B"))
                except BrokenPipeError:
                    ffmpeg_died = True   # its stderr says why (below)
                    break
                written += 1
            if not ffmpeg_died:
                if expected is not None and written < expected:
                    raise MediaError(f"frames ended after {written} of the {expected} that "
                                     f"the audio needs at {fps} fps")
                if written == 0:
                    raise MediaError("no frames to encode")
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
            returncode = proc.wait()
        finally:
            if proc.poll() is None:   # stopped early: an error or the caller's exception
                proc.kill()
                proc.wait()
            try:
                proc.stdin.close()
            except OSError:
                pass
    if returncode != 0 or ffmpeg_died:
        raise MediaError(_ffmpeg_failure(f"encoding {out.name}", stderr_path.read_text(
            encoding="utf-8", errors="replace"), out.parent, returncode))


def _widen_pipe(pipe) -> None:
    """Let the pipe hold a whole frame (64 KiB by default, 1 MiB allowed without privileges), so
    that writing a frame returns at once and the next is made while ffmpeg encodes."""
    try:
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (AttributeError, OSError):
        pass   # not Linux, or a lower system limit: slower, still correct


def _run_ffmpeg(args: list[str], what: str) -> None:
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats",
                             "-loglevel", "error", "-y", *args],
                            capture_output=True, text=True, errors="replace")
    if result.returncode != 0:
        raise MediaError(_ffmpeg_failure(what, result.stderr, Path(args[-1]).parent,
                                         result.returncode))


def _ffmpeg_failure(what: str, stderr: str, out_dir: Path, returncode: int | None = None) -> str:
    reason = _tail(stderr)
    if not reason and returncode is not None and returncode < 0:
        # Killed without a word: by the kernel's OOM killer, a file-size limit, or a person.
        try:
            reason = f"ffmpeg was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            reason = f"ffmpeg was killed by signal {-returncode}"
    message = f"ffmpeg failed {what}: {reason or 'no message'}"
    if "No space left on device" in stderr:
        message += f" — free disk space in {out_dir}"
    return message


def _tail(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return " | ".join(lines[-STDERR_TAIL_LINES:])
