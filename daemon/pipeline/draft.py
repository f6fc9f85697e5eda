"""The draft render: a CPU animatic of the scene, made without a GPU or model weights.

It shows the same composite reference image the full render starts from, with the people who
are speaking lit and outlined in their colour (everyone else dimmed), a level meter along the
top of each speaker's box driven by that speaker's own audio track (so lip-sync timing can be
checked by eye), their name in a header, the current line as a subtitle, and the real dialogue
audio. Output: H.264 + AAC MP4 at 25 fps at the canvas size.

Speed comes from rendering each visual state once — who speaks and which lines are shown only
change at line boundaries — and per frame only copying that state into a buffer and painting the
meters (numpy slices); ffmpeg encodes from a pipe while the next frame is made.
"""
from __future__ import annotations

import io
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from daemon.media.mp4 import frame_count, write_mp4
from daemon.pipeline.progress import Progress, Reporter
from daemon.tts.timeline import LineTiming, Soundtrack
from shared.compose import canvas_size, compose
from shared.scene import Scene

log = logging.getLogger(__name__)

FPS = 25
REPORT_EVERY_FRAMES = 25          # progress + cancel check once per second of video
PREVIEW_EVERY_FRAMES = 50         # a preview JPEG every 2 s of video
PREVIEW_MAX_WIDTH = 320
# x264 costs about the same on every frame, changed or not; ultrafast takes half the time of
# veryfast (the 10x-real-time budget on 2 cores) for ~3x the bytes (~1 MB for 30 s at 480p).
X264_PRESET = "ultrafast"

# One colour per cast member (outline, meter, name), distinct from each other and from skin
# tones; a cast larger than the palette repeats it.
SPEAKER_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 176, 0),     # amber
    (0, 190, 255),     # sky blue
    (255, 70, 160),    # pink
    (90, 220, 70),     # green
    (170, 110, 255),   # violet
    (255, 110, 40),    # orange
    (0, 220, 190),     # teal
    (240, 240, 80),    # yellow
)
NON_SPEAKER_BRIGHTNESS = 0.45     # everything outside the speakers' boxes while someone speaks
METER_TRACK_COLOUR = (40, 40, 40)
SUBTITLE_BAND_OPACITY = 0.65
SUBTITLE_MAX_LINES = 3

# The speaker track level mapped to the meter: -50 dBFS (silence, breath) → empty,
# -10 dBFS (loud speech) → full.
METER_FLOOR_DB = -50.0
METER_CEILING_DB = -10.0

# Fonts from Debian packages: fonts-dejavu-core (Latin, Greek, Cyrillic) and fonts-wqy-zenhei
# (Chinese, Japanese, Korean — it has Latin too); fonts-noto-cjk is accepted as well.
LATIN_FONT_FILES = (Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),)
CJK_FONT_FILES = (
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
)
# Han, kana, Hangul, CJK punctuation and full-width forms: text that needs a CJK font and that
# may wrap between any two characters.
_CJK_RANGES = ("\u1100-\u11ff\u2e80-\u2fdf\u3000-\u30ff\u3130-\u318f\u3400-\u4dbf"
               "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef")
_CJK = re.compile(f"[{_CJK_RANGES}]")
_WRAP_TOKENS = re.compile(rf"\s+|[{_CJK_RANGES}]|[^\s{_CJK_RANGES}]+")


class DraftError(ValueError):
    """The scene and soundtrack do not fit together; the message names the mismatch."""


Box = tuple[int, int, int, int]   # (row_min, col_min, row_max, col_max), max exclusive


def render_draft(scene: Scene, soundtrack: Soundtrack, out_path: Path, reporter: Reporter) -> Path:
    """Render the animatic of `scene` with `soundtrack` to `out_path` (MP4); returns out_path.

    Reports Progress(phase="frames") every second of video (with a preview JPEG every two) and
    checks for cancellation at the same points: Cancelled propagates and no file is left."""
    width, height = canvas_size(scene.settings)
    composite = compose(scene)
    boxes = [_clip_box(box, width, height) for box in composite.boxes]
    check_inputs(scene, soundtrack, composite.image.size, (width, height), boxes)

    n_frames = frame_count(len(soundtrack.mixed), soundtrack.mix_rate, FPS)
    fonts = FontBook(LATIN_FONT_FILES, CJK_FONT_FILES)
    painter = StatePainter(np.asarray(composite.image.convert("RGB")), boxes, scene, fonts)
    active = active_lines(soundtrack.timings, n_frames, FPS)
    levels = speaker_levels(soundtrack.speakers, soundtrack.speaker_rate, n_frames, FPS)

    def frames():
        buffer = np.empty((height, width, 3), np.uint8)
        state_key: tuple[int, ...] | None = None
        state = buffer
        speakers: list[int] = []
        for i in range(n_frames):
            if active[i] != state_key:
                state_key = active[i]
                lines = [soundtrack.timings[j] for j in state_key]
                state = painter.paint(lines)
                speakers = sorted({line.speaker for line in lines})
            frame = state
            if any(levels[s, i] > 0 for s in speakers):
                buffer[:] = state
                for s in speakers:
                    painter.draw_meter(buffer, s, levels[s, i])
                frame = buffer
            if i % REPORT_EVERY_FRAMES == 0:
                preview = preview_jpeg(frame) if i % PREVIEW_EVERY_FRAMES == 0 else None
                reporter.report(Progress(phase="frames", step=i, total=n_frames, preview=preview))
                reporter.check()
            yield frame
        reporter.report(Progress(phase="frames", step=n_frames, total=n_frames))
        reporter.report(Progress(phase="mux", message="finishing the MP4"))

    return write_mp4(frames(), FPS, (width, height), soundtrack.mixed, soundtrack.mix_rate,
                     out_path, preset=X264_PRESET)


def check_inputs(scene: Scene, soundtrack: Soundtrack, image_size: tuple[int, int],
                 canvas: tuple[int, int], boxes: list[Box]) -> None:
    cast = len(scene.cast)
    if image_size != canvas:
        raise DraftError(f"composite image is {image_size[0]}x{image_size[1]} but the canvas "
                         f"is {canvas[0]}x{canvas[1]}")
    if len(boxes) != cast:
        raise DraftError(f"composite has {len(boxes)} boxes for a cast of {cast}")
    if len(soundtrack.speakers) != cast:
        raise DraftError(f"soundtrack has {len(soundtrack.speakers)} speaker tracks for a cast "
                         f"of {cast}: build it from this scene")
    if len(soundtrack.mixed) == 0:
        raise DraftError("soundtrack is silent and empty: the scene needs at least one line")
    for timing in soundtrack.timings:
        if not 0 <= timing.speaker < cast:
            raise DraftError(f"line {timing.line} is spoken by cast member {timing.speaker}, "
                             f"but the cast has {cast}")


def active_lines(timings: list[LineTiming], n_frames: int, fps: int) -> list[tuple[int, ...]]:
    """For each frame, the indices (into `timings`) of the lines being spoken when it starts
    (start ≤ i/fps < end), ordered by start time; lines may overlap."""
    active: list[list[int]] = [[] for _ in range(n_frames)]
    order = sorted(range(len(timings)), key=lambda j: (timings[j].start, j))
    for j in order:
        # 1e-9: a line starting at exactly k/fps (in binary floating point) starts at frame k
        first = max(0, math.ceil(timings[j].start * fps - 1e-9))
        end = min(n_frames, math.ceil(timings[j].end * fps - 1e-9))
        for i in range(first, end):
            active[i].append(j)
    return [tuple(a) for a in active]


def speaker_levels(tracks: list[np.ndarray], rate: int, n_frames: int, fps: int) -> np.ndarray:
    """Meter level 0..1 per speaker and frame: the RMS of that speaker's track over the frame,
    in dB between METER_FLOOR_DB and METER_CEILING_DB. Shape [speakers, n_frames]."""
    levels = np.zeros((len(tracks), n_frames), np.float32)
    for s, track in enumerate(tracks):
        track = np.asarray(track, np.float32)
        # Frame i covers samples [i·rate/fps, (i+1)·rate/fps): integer bounds, no drift.
        bounds = np.arange(n_frames + 1, dtype=np.int64) * rate // fps
        bounds = np.minimum(bounds, len(track))
        energy = np.concatenate([[0.0], np.cumsum(track.astype(np.float64) ** 2)])
        counts = np.maximum(bounds[1:] - bounds[:-1], 1)
        rms = np.sqrt((energy[bounds[1:]] - energy[bounds[:-1]]) / counts)
        db = 20 * np.log10(np.maximum(rms, 1e-10))
        levels[s] = np.clip((db - METER_FLOOR_DB) / (METER_CEILING_DB - METER_FLOOR_DB), 0, 1)
    return levels


def preview_jpeg(frame: np.ndarray) -> bytes:
    image = Image.fromarray(frame)
    if image.width > PREVIEW_MAX_WIDTH:
        image = image.resize((PREVIEW_MAX_WIDTH, round(image.height * PREVIEW_MAX_WIDTH
                                                       / image.width)), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=75)
    return out.getvalue()


# ----------------------------------------------------------------------------- drawing


class FontBook:
    """TrueType fonts by size, CJK-capable ones for text that needs them; PIL's own font (with a
    logged warning) when the Debian font packages are missing."""

    def __init__(self, latin_files: tuple[Path, ...], cjk_files: tuple[Path, ...]):
        self._latin = next((p for p in latin_files if p.is_file()), None)
        self._cjk = next((p for p in cjk_files if p.is_file()), None)
        self._fonts: dict[tuple[Path | None, int], ImageFont.ImageFont] = {}
        self._warned: set[str] = set()

    def font_for(self, text: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        path = self._cjk if _CJK.search(text) else self._latin
        if path is None:
            path = self._latin or self._cjk   # CJK fonts carry Latin; the reverse shows boxes
        if path is None or (_CJK.search(text) and self._cjk is None):
            self._warn_once(text)
        key = (path, size)
        if key not in self._fonts:
            self._fonts[key] = (ImageFont.truetype(str(path), size) if path is not None
                                else ImageFont.load_default(size))
        return self._fonts[key]

    def _warn_once(self, text: str) -> None:
        needs = "fonts-wqy-zenhei" if _CJK.search(text) else "fonts-dejavu-core"
        if needs not in self._warned:
            self._warned.add(needs)
            log.warning("draft subtitles: no font for %r installed; using a fallback that may "
                        "show boxes — apt-get install %s", text[:20], needs)


def wrap_text(text: str, font: ImageFont.ImageFont, max_width: float) -> list[str]:
    """Greedy word wrap by rendered width; CJK text (no spaces) may break between any two
    characters, and a single word wider than the line is broken by characters."""
    tokens = _WRAP_TOKENS.findall(text.strip())
    lines: list[str] = []
    current = ""
    for token in tokens:
        if token.isspace():
            if current:
                current += " "
            continue
        candidate = current + token
        if font.getlength(candidate) <= max_width:
            current = candidate
            continue
        if current.strip():
            lines.append(current.rstrip())
        current = ""
        for char in token:   # start the token on a fresh line, splitting it if it must
            if current and font.getlength(current + char) > max_width:
                lines.append(current)
                current = ""
            current += char
    if current.strip():
        lines.append(current.rstrip())
    return lines


@dataclass(frozen=True)
class _Layout:
    outline: int          # px, drawn inside each box
    meter: int            # px, meter bar height
    margin: int           # px, around header and subtitles
    subtitle_size: int    # font px
    header_size: int      # font px


class StatePainter:
    """Paints the still image for one visual state (who speaks, which lines are on screen) and
    the per-frame meters on top of it."""

    def __init__(self, composite: np.ndarray, boxes: list[Box], scene: Scene, fonts: FontBook):
        self._base = composite
        self._dimmed = (composite * NON_SPEAKER_BRIGHTNESS).astype(np.uint8)
        self._boxes = boxes
        self._names = [person.name for person in scene.cast]
        self._title = scene.title
        self._subtitles = scene.settings.subtitles != "none"
        self._fonts = fonts
        height, width = composite.shape[:2]
        unit = min(width, height)   # 480 at 480p whatever the aspect
        self._layout = _Layout(outline=max(2, round(unit / 120)),
                               meter=max(4, round(unit / 60)),
                               margin=max(6, round(unit / 40)),
                               subtitle_size=max(12, round(unit / 18)),
                               header_size=max(10, round(unit / 22)))
        self._lit: dict[tuple[int, ...], np.ndarray] = {}

    def paint(self, lines: list[LineTiming]) -> np.ndarray:
        speakers = tuple(sorted({line.speaker for line in lines}))
        # PIL keeps RGB as 4 bytes a pixel, so this copies: the cached image stays clean.
        image = Image.fromarray(self._lit_image(speakers))
        draw = ImageDraw.Draw(image)
        self._draw_header(image, draw, speakers)
        if self._subtitles:
            self._draw_subtitles(image, draw, [line.text for line in lines if line.text.strip()])
        return np.asarray(image)

    def draw_meter(self, frame: np.ndarray, speaker: int, level: float) -> None:
        r0, c0, r1, c1 = self._inner_meter_box(speaker)
        filled = round((c1 - c0) * float(level))
        frame[r0:r1, c0:c0 + filled] = SPEAKER_COLOURS[speaker % len(SPEAKER_COLOURS)]

    def _inner_meter_box(self, speaker: int) -> Box:
        """The meter runs along the top of the box, inside the outline: clear of the subtitles
        and of the header, whose band starts above the boxes in the default layout."""
        r0, c0, r1, c1 = self._boxes[speaker]
        t, m = self._layout.outline, self._layout.meter
        return (r0 + t, c0 + t, min(r1 - t, r0 + t + m), max(c0 + t, c1 - t))

    def _lit_image(self, speakers: tuple[int, ...]) -> np.ndarray:
        """The composite with these speakers lit and outlined, the rest dimmed; cached (the cast
        is small, so there are few combinations)."""
        if speakers not in self._lit:
            if not speakers:
                image = self._base.copy()
            else:
                image = self._dimmed.copy()
                for s in speakers:
                    r0, c0, r1, c1 = self._boxes[s]
                    image[r0:r1, c0:c1] = self._base[r0:r1, c0:c1]
                for s in speakers:
                    self._draw_outline(image, s)
                    r0, c0, r1, c1 = self._inner_meter_box(s)
                    image[r0:r1, c0:c1] = METER_TRACK_COLOUR
            self._lit[speakers] = image
        return self._lit[speakers]

    def _draw_outline(self, image: np.ndarray, speaker: int) -> None:
        r0, c0, r1, c1 = self._boxes[speaker]
        t = self._layout.outline
        colour = SPEAKER_COLOURS[speaker % len(SPEAKER_COLOURS)]
        image[r0:r0 + t, c0:c1] = colour
        image[max(r0, r1 - t):r1, c0:c1] = colour
        image[r0:r1, c0:c0 + t] = colour
        image[r0:r1, max(c0, c1 - t):c1] = colour

    def _draw_header(self, image: Image.Image, draw: ImageDraw.ImageDraw,
                     speakers: tuple[int, ...]) -> None:
        """Top-left: the speakers' names in their colours, or the title between lines."""
        parts = ([(self._names[s], SPEAKER_COLOURS[s % len(SPEAKER_COLOURS)]) for s in speakers]
                 if speakers else ([(self._title, (220, 220, 220))] if self._title else []))
        parts = [(text, colour) for text, colour in parts if text.strip()]
        if not parts:
            return
        size, margin = self._layout.header_size, self._layout.margin
        separator = "  ·  "
        sep_font = self._fonts.font_for(separator, size)
        widths = [self._fonts.font_for(text, size).getlength(text) for text, _ in parts]
        total = sum(widths) + sep_font.getlength(separator) * (len(parts) - 1)
        pad = margin // 2
        band = (margin, margin, min(image.width, margin + int(total) + 2 * pad),
                margin + round(size * 1.3) + pad)
        _darken(image, band, SUBTITLE_BAND_OPACITY)
        x, y = margin + pad, margin + pad // 2
        for k, ((text, colour), w) in enumerate(zip(parts, widths)):
            if k:
                draw.text((x, y), separator, font=sep_font, fill=(200, 200, 200))
                x += sep_font.getlength(separator)
            draw.text((x, y), text, font=self._fonts.font_for(text, size), fill=colour)
            x += w

    def _draw_subtitles(self, image: Image.Image, draw: ImageDraw.ImageDraw,
                        texts: list[str]) -> None:
        """Bottom: the lines on screen, wrapped and centred on a translucent band. Text that does
        not fit in SUBTITLE_MAX_LINES at the normal size is set smaller, then cut with '…'."""
        if not texts:
            return
        margin = self._layout.margin
        max_width = image.width - 4 * margin
        max_lines = SUBTITLE_MAX_LINES * len(texts)
        for scale in (1.0, 0.85, 0.7):
            size = max(10, round(self._layout.subtitle_size * scale))
            rows = [(row, self._fonts.font_for(text, size)) for text in texts
                    for row in wrap_text(text, self._fonts.font_for(text, size), max_width)]
            if len(rows) <= max_lines:
                break
        if len(rows) > max_lines:
            rows = rows[:max_lines]
            last, font = rows[-1]
            while last and font.getlength(last + "…") > max_width:
                last = last[:-1]
            rows[-1] = (last.rstrip() + "…", font)
        line_height = round(size * 1.3)
        top = max(0, image.height - margin - len(rows) * line_height - margin)
        _darken(image, (0, top, image.width, image.height), SUBTITLE_BAND_OPACITY)
        y = top + margin
        for row, font in rows:
            draw.text((image.width / 2, y), row, font=font, fill=(255, 255, 255), anchor="ma")
            y += line_height


def _darken(image: Image.Image, box: tuple[int, int, int, int], opacity: float) -> None:
    """Blend black over `box` (left, top, right, bottom) of `image`, in place."""
    left, top, right, bottom = box
    region = image.crop(box)
    image.paste(Image.eval(region, lambda v: int(v * (1 - opacity))), (left, top, right, bottom))


def _clip_box(box: tuple[int, int, int, int], width: int, height: int) -> Box:
    r0, c0, r1, c1 = (int(v) for v in box)
    r0, r1 = max(0, min(r0, height)), max(0, min(r1, height))
    c0, c1 = max(0, min(c0, width)), max(0, min(c1, width))
    return (r0, c0, max(r0, r1), max(c0, c1))
