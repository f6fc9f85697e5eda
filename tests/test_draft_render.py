"""daemon.pipeline.draft: the CPU animatic — size, duration, who is highlighted when, subtitles,
progress and cancellation."""
from __future__ import annotations

import io
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image, ImageDraw

from daemon.media.mp4 import frame_count, probe
from daemon.pipeline.draft import (
    CJK_FONT_FILES,
    FPS,
    LATIN_FONT_FILES,
    SPEAKER_COLOURS,
    DraftError,
    FontBook,
    active_lines,
    render_draft,
    speaker_levels,
    wrap_text,
)
from daemon.pipeline.progress import Cancelled, Progress, Reporter
from daemon.tts.timeline import MIX_RATE, SPEAKER_RATE, LineTiming, Soundtrack
from shared.compose import compose
from shared.scene import Crop, Line, Person, Scene, Settings, default_placements

GREY = (128, 128, 128)


def portrait_png(colour=GREY) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (120, 160), colour).save(out, format="PNG")
    return out.getvalue()


def two_person_scene(texts: tuple[str, str], aspect: str = "16:9") -> Scene:
    placements = default_placements(2)
    cast = [Person(name=name, image=portrait_png(), crop=Crop(0, 0, 1, 1),
                   placement=placements[i], voice="af_heart", lang="en-us")
            for i, name in enumerate(("Alice", "Bob"))]
    lines = [Line(speaker=0, text=texts[0]), Line(speaker=1, text=texts[1])]
    return Scene(cast=cast, lines=lines, settings=Settings(aspect=aspect), title="Test")


def burst(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)


def soundtrack_for(scene: Scene, spans: list[tuple[float, float]], duration: float) -> Soundtrack:
    """Line i is a loud tone from spans[i][0] to spans[i][1] on its speaker's track."""
    mixed = np.zeros(round(duration * MIX_RATE), np.float32)
    tracks = [np.zeros(round(duration * SPEAKER_RATE), np.float32) for _ in scene.cast]
    timings = []
    for i, (line, (start, end)) in enumerate(zip(scene.lines, spans)):
        a = burst(end - start, MIX_RATE)
        mixed[round(start * MIX_RATE):round(start * MIX_RATE) + len(a)] += a
        b = burst(end - start, SPEAKER_RATE)
        tracks[line.speaker][round(start * SPEAKER_RATE):round(start * SPEAKER_RATE) + len(b)] += b
        timings.append(LineTiming(line=i, speaker=line.speaker, start=start, end=end,
                                  text=line.text))
    return Soundtrack(mixed=mixed, speakers=tracks, timings=timings, duration=duration,
                      warnings=[])


def decode_frame_at(path: Path, seconds: float) -> np.ndarray:
    index = round(seconds * FPS)
    reader = imageio_ffmpeg.read_frames(str(path))
    width, height = next(reader)["size"]
    for i, raw in enumerate(reader):
        if i == index:
            reader.close()
            return np.frombuffer(raw, np.uint8).reshape(height, width, 3).astype(int)
    raise AssertionError(f"no frame at {seconds} s")


SPANS = [(0.2, 1.2), (1.4, 2.4)]    # Alice speaks, a pause, then Bob
DURATION = 2.6


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    scene = two_person_scene(("Hello Bob, how are you today?", "Fine, thanks!"))
    soundtrack = soundtrack_for(scene, SPANS, DURATION)
    events: list[Progress] = []
    out = render_draft(scene, soundtrack, tmp_path_factory.mktemp("draft") / "draft.mp4",
                       Reporter(on_progress=events.append))
    return scene, out, events


def test_draft_has_the_canvas_size_25_fps_and_the_soundtrack_duration(rendered):
    _, out, _ = rendered
    info = probe(out)
    assert (info.width, info.height, info.fps) == (896, 448, 25.0)   # 480p 16:9 canvas
    assert info.frames == frame_count(round(DURATION * MIX_RATE), MIX_RATE, FPS) == 65
    assert (info.video_codec, info.audio_codec, info.audio_rate) == ("h264", "aac", MIX_RATE)
    assert abs(info.duration - DURATION) <= 1 / FPS


def outline_patch(frame: np.ndarray, box) -> np.ndarray:
    """Mean colour of the middle of the box's left edge, where the outline is drawn."""
    r0, c0, r1, _ = box
    middle = (r0 + r1) // 2
    return frame[middle - 8:middle + 8, c0 + 1:c0 + 3].reshape(-1, 3).mean(axis=0)


def interior_brightness(frame: np.ndarray, box) -> float:
    r0, c0, r1, c1 = box
    row, col = (r0 + r1) // 2, (c0 + c1) // 2
    return float(frame[row - 20:row + 20, col - 20:col + 20].mean())


def test_the_active_speaker_is_outlined_in_their_colour_and_the_other_dimmed(rendered):
    scene, out, _ = rendered
    alice, bob = compose(scene).boxes
    alice_speaks = decode_frame_at(out, 0.7)
    bob_speaks = decode_frame_at(out, 1.9)

    assert np.abs(outline_patch(alice_speaks, alice) - SPEAKER_COLOURS[0]).max() < 40
    assert np.abs(outline_patch(alice_speaks, bob) - SPEAKER_COLOURS[1]).max() > 100
    assert np.abs(outline_patch(bob_speaks, bob) - SPEAKER_COLOURS[1]).max() < 40
    assert np.abs(outline_patch(bob_speaks, alice) - SPEAKER_COLOURS[0]).max() > 100

    # The grey portraits: lit (128) while speaking, dimmed to 45% while the other one speaks.
    assert interior_brightness(alice_speaks, alice) == pytest.approx(128, abs=6)
    assert interior_brightness(alice_speaks, bob) == pytest.approx(128 * 0.45, abs=6)
    assert interior_brightness(bob_speaks, alice) == pytest.approx(128 * 0.45, abs=6)


def test_nobody_is_highlighted_in_the_pause_between_lines(rendered):
    scene, out, _ = rendered
    pause = decode_frame_at(out, 1.3)
    for box in compose(scene).boxes:
        assert interior_brightness(pause, box) == pytest.approx(128, abs=6)
        assert np.abs(outline_patch(pause, box) - GREY).max() < 12


def test_the_level_meter_follows_the_speaker_track(rendered):
    scene, out, _ = rendered
    alice, _ = compose(scene).boxes
    r0, c0, _, c1 = alice
    # At 448 px the outline is 4 px and the meter 7 px high, along the top inside the box. The
    # test tone (RMS -13.5 dBFS) fills (−13.5 + 50) / 40 = 91% of the inner width.
    row, left, right = r0 + 4 + 3, c0 + 4, c1 - 4

    def at(fraction: float) -> int:
        return left + round((right - left) * fraction)

    speaking = decode_frame_at(out, 0.7)
    assert np.abs(speaking[row, at(0.5)] - SPEAKER_COLOURS[0]).max() < 40
    assert np.abs(speaking[row, at(0.97)] - (40, 40, 40)).max() < 25     # the empty track
    pause = decode_frame_at(out, 1.3)
    assert np.abs(pause[row, at(0.5)] - GREY).max() < 12                 # no meter, no track


def bright_pixels_in_subtitle_band(frame: np.ndarray) -> int:
    band = frame[-frame.shape[0] // 6:]   # the band is dark (35% of the image); text is white
    return int((band.min(axis=2) > 200).sum())


def test_subtitle_shows_only_while_a_line_is_spoken(rendered):
    _, out, _ = rendered
    assert bright_pixels_in_subtitle_band(decode_frame_at(out, 0.7)) > 500
    assert bright_pixels_in_subtitle_band(decode_frame_at(out, 1.3)) == 0


def test_no_subtitles_are_drawn_when_the_scene_asks_for_none(tmp_path):
    scene = two_person_scene(("Hello Bob, how are you today?", "Fine, thanks!"))
    scene.settings.subtitles = "none"
    out = render_draft(scene, soundtrack_for(scene, SPANS, DURATION), tmp_path / "plain.mp4",
                       Reporter())
    assert bright_pixels_in_subtitle_band(decode_frame_at(out, 0.7)) == 0


def glyph(font, char: str) -> np.ndarray:
    image = Image.new("L", (40, 40))
    ImageDraw.Draw(image).text((4, 4), char, font=font, fill=255)
    return np.asarray(image)


def test_cjk_subtitle_renders_with_a_cjk_font(tmp_path):
    fonts = FontBook(LATIN_FONT_FILES, CJK_FONT_FILES)
    font = fonts.font_for("你好", 24)
    assert any(Path(font.path) == p for p in CJK_FONT_FILES), \
        "no CJK font: apt-get install fonts-wqy-zenhei"
    # A font without these glyphs draws the same box (or nothing) for both.
    assert not np.array_equal(glyph(font, "你"), glyph(font, "好"))

    scene = two_person_scene(("你好，今天过得怎么样？", "很好，谢谢！"))
    out = render_draft(scene, soundtrack_for(scene, SPANS, DURATION), tmp_path / "cjk.mp4",
                       Reporter())
    assert bright_pixels_in_subtitle_band(decode_frame_at(out, 0.7)) > 300


def test_progress_reports_every_second_with_a_preview_every_two(rendered):
    _, _, events = rendered
    frames = [e for e in events if e.phase == "frames"]
    assert [e.step for e in frames] == [0, 25, 50, 65]
    assert all(e.total == 65 for e in frames)
    assert [e.preview is not None for e in frames] == [True, False, True, False]
    preview = Image.open(io.BytesIO(frames[0].preview))
    assert (preview.format, preview.size) == ("JPEG", (320, 160))
    assert events[-1].phase == "mux"


def test_cancel_raises_cancelled_and_leaves_no_file(tmp_path):
    scene = two_person_scene(("One", "Two"))
    checks = []

    def cancel_on_second_check() -> bool:
        checks.append(1)
        return len(checks) >= 2

    with pytest.raises(Cancelled):
        render_draft(scene, soundtrack_for(scene, SPANS, DURATION), tmp_path / "out.mp4",
                     Reporter(is_cancelled=cancel_on_second_check))
    assert len(checks) == 2
    assert list(tmp_path.iterdir()) == []


def test_a_soundtrack_for_another_cast_is_refused(tmp_path):
    scene = two_person_scene(("One", "Two"))
    soundtrack = soundtrack_for(scene, SPANS, DURATION)
    soundtrack.speakers = soundtrack.speakers[:1]
    with pytest.raises(DraftError, match="1 speaker tracks for a cast of 2"):
        render_draft(scene, soundtrack, tmp_path / "out.mp4", Reporter())
    assert list(tmp_path.iterdir()) == []


def test_active_lines_follow_frame_start_times_and_keep_overlaps():
    timings = [LineTiming(0, 0, 0.0, 0.1, "a"), LineTiming(1, 1, 0.06, 0.2, "b")]
    # frames start at 0, .04, .08, .12, .16, .20
    assert active_lines(timings, 6, 25) == [(0,), (0,), (0, 1), (1,), (1,), ()]


def test_speaker_levels_map_silence_to_zero_and_loud_speech_to_one():
    rate = 16000
    quiet = np.zeros(rate, np.float32)
    loud = np.full(rate, 0.5, np.float32)             # -6 dBFS: above the meter's ceiling
    medium = np.full(rate, 10 ** (-30 / 20), np.float32)   # -30 dBFS: half way
    levels = speaker_levels([quiet, loud, medium], rate, 25, 25)
    assert levels.shape == (3, 25)
    assert levels[0].max() == 0.0
    assert levels[1].min() == 1.0
    assert levels[2] == pytest.approx(np.full(25, 0.5), abs=1e-4)


def test_wrap_text_fits_the_width_and_breaks_cjk_between_characters():
    fonts = FontBook(LATIN_FONT_FILES, CJK_FONT_FILES)
    latin = fonts.font_for("x", 24)
    rows = wrap_text("the quick brown fox jumps over the lazy dog " * 3, latin, 300)
    assert len(rows) > 2
    assert all(latin.getlength(row) <= 300 for row in rows)
    assert " ".join(rows) == ("the quick brown fox jumps over the lazy dog " * 3).strip()

    cjk = fonts.font_for("你", 24)
    text = "我们今天下午一起去公园散步吧天气非常好"
    rows = wrap_text(text, cjk, 24 * 6)
    assert "".join(rows) == text
    assert [len(row) for row in rows] == [6, 6, 6, 1]


def test_missing_font_packages_fall_back_to_pil_font_with_a_warning(caplog):
    fonts = FontBook((Path("/nonexistent/DejaVuSans.ttf"),), (Path("/nonexistent/cjk.ttc"),))
    with caplog.at_level("WARNING", logger="daemon.pipeline.draft"):
        latin = fonts.font_for("Hello", 20)
        fonts.font_for("你好", 20)
    assert latin.getlength("Hello") > 0
    assert "apt-get install fonts-dejavu-core" in caplog.text
    assert "apt-get install fonts-wqy-zenhei" in caplog.text
