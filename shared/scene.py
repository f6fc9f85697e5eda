"""The scene: who is in the video, what they say, how it is rendered — and its project file.

A project file is a zip holding `project.json` ({"format": "duet-project", "version": 1, ...})
and the user's images and line audio under `assets/`, each referenced from the JSON by its
archive name. Loading validates everything (archive safety, every field's type and range,
every asset decoded) before a `Scene` is built; every failure is a `ProjectError` whose message
starts with the field path (`lines[3].speed: 3.0 is out of range 0.5–2.0`) or the archive entry.
Saving is deterministic (fixed timestamps, sorted entries, canonical values) because the daemon
hashes project bytes for caching.

Also here: import of the official MultiTalk / InfiniteTalk input JSON (`import_multitalk_json`).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import stat
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from PIL import Image, ImageOps

from shared.script import ScriptError, parse_script
from shared.voices import FEMALE, KNOWN_VOICES, MALE, default_voice

PROJECT_FORMAT = "duet-project"
PROJECT_VERSION = 1
PROJECT_DOCUMENT = "project.json"
ASSETS_FOLDER = "assets/"

# Limits. Each one bounds memory or time spent on a file someone else made.
MIN_CAST = 2
MAX_CAST = 8
MAX_LINES = 500
MAX_NAME_CHARS = 60
MAX_TITLE_CHARS = 200
MAX_LINE_CHARS = 1000
MAX_PROMPT_CHARS = 4000
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MIN_IMAGE_SIDE = 16
MAX_AUDIO_BYTES = 50 * 1024 * 1024
MAX_AUDIO_SECONDS = 600.0
# Resampling cost grows with the rate (a polyphase filter ~20 taps per unit of the larger rate):
# a header claiming 2^31 Hz would ask for hundreds of GB. Real recordings lie well inside.
AUDIO_RATE_RANGE = (8000, 384000)
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
MAX_PROJECT_BYTES = 512 * 1024 * 1024  # the zip itself and the sum of its uncompressed entries
MAX_ENTRIES = 3 + MAX_CAST + MAX_LINES  # project.json, assets/, background, portraits, line audio

SPEED_RANGE = (0.5, 2.0)
PAUSE_RANGE = (-10.0, 10.0)
STEPS_RANGE = (1, 100)
SEED_RANGE = (0, 2**32 - 1)
GUIDE_RANGE = (0.0, 20.0)
SHIFT_RANGE = (0.5, 20.0)
TEACACHE_THRESHOLD_RANGE = (0.05, 1.0)
# Each clip after the first re-uses 25 frames as motion context, so a clip must be longer.
FRAME_NUM_RANGE = (29, 201)
PLACEMENT_HEIGHT_RANGE = (0.05, 2.0)

MODES = ("draft", "full")
RESOLUTIONS = ("480p", "720p")
ASPECTS = {"16:9": 16 / 9, "9:16": 9 / 16, "1:1": 1.0, "4:3": 4 / 3, "3:4": 3 / 4}  # width / height
SUBTITLES = ("none", "burn", "sidecar")
BACKGROUND_KINDS = ("color", "blur", "image")
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
AUDIO_FORMATS = ("WAV", "WAVEX", "FLAC", "OGG")

# Wan's official negative prompt in the English wording the MultiTalk config uses, plus
# "camera shake" (Wan I2V prepends it) and mouth artefacts that matter for lip sync.
DEFAULT_NEGATIVE_PROMPT = (
    "camera shake, bright tones, overexposed, static, blurred details, subtitles, style, works, "
    "paintings, images, static, overall gray, worst quality, low quality, JPEG compression "
    "residue, ugly, incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, "
    "disfigured, misshapen limbs, fused fingers, still picture, messy background, three legs, "
    "many people in the background, walking backwards, distorted mouth, blurry teeth"
)

_VOICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+\-]{0,63}")  # af_heart, espeak:en-us+f3
_LANG = re.compile(r"[A-Za-z0-9_\-]{1,16}")
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
_ASSET_NAME = re.compile(r"assets/[A-Za-z0-9][A-Za-z0-9._\-]{0,99}")


class ProjectError(ValueError):
    """A project, scene or imported file is not valid; the message names the field and the fix."""


def default_prompt(people: int) -> str:
    count = {2: "Two", 3: "Three", 4: "Four"}.get(people, "Several")
    return (
        f"{count} people are having a natural, friendly conversation. Each speaks in turn with "
        "clear lip movements, natural facial expressions and subtle head and hand gestures, and "
        "looks at the others while listening. Soft, even lighting, sharp focus, a steady medium shot."
    )


DEFAULT_PROMPT = default_prompt(2)


# ----------------------------------------------------------------------------- the model


@dataclass
class Crop:
    """A rectangle in fractions 0..1 of the source image (portrait, or the group photo)."""

    x: float
    y: float
    w: float
    h: float


@dataclass
class Placement:
    """Where a portrait goes: its centre on the canvas (0..1) and its height as a fraction of
    the canvas height (the width follows from the crop's aspect)."""

    cx: float
    cy: float
    height: float


@dataclass
class Person:
    name: str
    image: bytes | None  # encoded PNG/JPEG/WebP; None = stands in the group photo (Background.image)
    crop: Crop  # of `image`, or this person's box in the group photo when image is None
    placement: Placement
    voice: str
    lang: str


@dataclass
class Line:
    speaker: int  # index into Scene.cast
    text: str
    voice: str | None = None  # overrides the speaker's voice for this line
    speed: float = 1.0
    # Seconds after this line ends before the next starts; negative = overlap. A line with its
    # own audio may overlap by up to its full length (the next line then starts with it).
    pause_after: float = 0.3
    audio: bytes | None = None  # user WAV/FLAC/OGG used instead of TTS (text may then be "")


@dataclass
class Background:
    kind: str  # "color" | "blur" (the first portrait, blurred) | "image" (a photo, e.g. a group photo)
    color: str = "#1e1e24"  # also what transparent portraits are flattened on
    image: bytes | None = None


@dataclass
class Settings:
    mode: str = "draft"
    resolution: str = "480p"
    aspect: str = "16:9"
    steps: int = 40
    text_guide: float = 5.0
    audio_guide: float = 4.0
    shift: float | None = None  # None → 7 at 480p, 11 at 720p (see effective_shift)
    seed: int = 42
    color_correction: bool = True
    teacache: bool = False
    teacache_threshold: float = 0.3
    apg: bool = False
    subtitles: str = "sidecar"
    frame_num: int = 81

    def effective_shift(self) -> float:
        if self.shift is not None:
            return self.shift
        return 7.0 if self.resolution == "480p" else 11.0


@dataclass
class Scene:
    cast: list[Person]
    lines: list[Line]
    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    settings: Settings = field(default_factory=Settings)
    background: Background = field(default_factory=lambda: Background("color"))
    title: str = ""

    def voice_of(self, line_index: int) -> str:
        line = self.lines[line_index]
        return line.voice or self.cast[line.speaker].voice


def default_placements(n: int) -> list[Placement]:
    """n people side by side, evenly spaced, standing on the bottom edge; smaller when many so
    they do not overlap on a 16:9 canvas."""
    height = min(0.85, 1.7 / n)
    return [Placement(cx=(i + 0.5) / n, cy=1.0 - height / 2, height=height) for i in range(n)]


def nearest_aspect(width: int, height: int) -> str:
    """The supported aspect closest to width:height (compared as log ratios, so 2:1 and 1:2
    are treated alike)."""
    ratio = math.log(width / height)
    return min(ASPECTS, key=lambda name: abs(math.log(ASPECTS[name]) - ratio))


# ----------------------------------------------------------------------------- assets


def decode_image(data: bytes, field_path: str = "image") -> Image.Image:
    """Decode an accepted image (PNG/JPEG/WebP within the limits) upright (EXIF orientation
    applied) as RGB, or RGBA when it has transparency. Crops are fractions of this image."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ProjectError(
            f"{field_path}: the image is {_mb(len(data))} (limit {_mb(MAX_IMAGE_BYTES)}); "
            "save it smaller"
        )
    with warnings.catch_warnings():
        # Pillow's own bomb guard warns below its hard limit; treat it as the error it is.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ProjectError(f"{field_path}: the image has too many pixels "
                               f"(limit {MAX_IMAGE_PIXELS // 1_000_000} MP)") from None
        except Exception as e:
            kind = {"png": "PNG", "jpg": "JPEG", "webp": "WebP"}.get(_image_extension(data))
            if kind:  # the right signature, but the header does not parse
                raise ProjectError(f"{field_path}: the {kind} image is corrupt ({e})") from None
            raise ProjectError(f"{field_path}: not a PNG, JPEG or WebP image ({e})") from None
        # The header gives the size; check it BEFORE decoding (decompression bombs).
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ProjectError(
                f"{field_path}: the image is {width}×{height} = {width * height / 1e6:.1f} MP "
                f"(limit {MAX_IMAGE_PIXELS // 1_000_000} MP); scale it down"
            )
        if min(width, height) < MIN_IMAGE_SIDE:
            raise ProjectError(
                f"{field_path}: the image is {width}×{height}; at least "
                f"{MIN_IMAGE_SIDE}×{MIN_IMAGE_SIDE} pixels are needed"
            )
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except Exception as e:
            kind = {"WEBP": "WebP"}.get(image.format, image.format)
            raise ProjectError(f"{field_path}: the {kind} image is corrupt ({e})") from None
    return _to_rgb_or_rgba(image)


def _to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):  # 16/32-bit greyscale: scale to 8 bits, not clip
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def audio_duration(data: bytes, field_path: str = "audio") -> float:
    """Decode user audio (WAV/FLAC/OGG within the limits) fully and return its length in seconds."""
    if len(data) > MAX_AUDIO_BYTES:
        raise ProjectError(
            f"{field_path}: the audio is {_mb(len(data))} (limit {_mb(MAX_AUDIO_BYTES)}); "
            "shorten it or save it as FLAC"
        )
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception as e:
        # libsndfile's own words, without the in-memory file object soundfile prefixes them with
        reason = getattr(e, "error_string", None) or str(e)
        raise ProjectError(f"{field_path}: not a readable WAV, FLAC or OGG file ({reason})") from None
    if info.format not in AUDIO_FORMATS:
        raise ProjectError(
            f"{field_path}: {info.format_info or info.format} audio is not supported; "
            "use WAV, FLAC or OGG"
        )
    low, high = AUDIO_RATE_RANGE
    if not low <= info.samplerate <= high:
        raise ProjectError(
            f"{field_path}: sample rate {info.samplerate} Hz is outside {low}–{high} Hz; "
            "re-export it at 16, 24, 44.1 or 48 kHz"
        )
    too_long = f"{field_path}: the audio lasts over {MAX_AUDIO_SECONDS:.0f} s (the limit)"
    if info.frames > MAX_AUDIO_SECONDS * info.samplerate:
        raise ProjectError(too_long)
    # Decode block by block: proves every sample reads without holding minutes of float audio.
    frames = 0
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            for block in sound.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                frames += len(block)
                if frames > MAX_AUDIO_SECONDS * sound.samplerate:
                    raise ProjectError(too_long)
            rate = sound.samplerate
    except ProjectError:
        raise
    except Exception as e:
        raise ProjectError(f"{field_path}: the {info.format} audio is corrupt ({e})") from None
    if frames == 0:
        raise ProjectError(f"{field_path}: the audio has no samples")
    return frames / rate


# ----------------------------------------------------------------------------- document ⇄ scene


def scene_to_document(scene: Scene) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The project.json document and the assets it references by archive name. Not validated:
    `scene_from_document` (or save_project) does that."""
    _require_type(scene, Scene, "scene")
    _require_type(scene.settings, Settings, "settings")
    _require_type(scene.background, Background, "background")
    _require_type(scene.cast, list, "cast")
    _require_type(scene.lines, list, "lines")
    assets: dict[str, bytes] = {}

    def asset(value: object, stem: str, path: str, sniff: Callable[[bytes], str]) -> str | None:
        if value is None:
            return None
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ProjectError(f"{path}: must be bytes or None, not {type(value).__name__}")
        data = bytes(value)
        name = f"{ASSETS_FOLDER}{stem}.{sniff(data)}"
        assets[name] = data
        return name

    settings = scene.settings
    background = scene.background
    cast = []
    for i, person in enumerate(scene.cast):
        _require_type(person, Person, f"cast[{i}]")
        _require_type(person.crop, Crop, f"cast[{i}].crop")
        _require_type(person.placement, Placement, f"cast[{i}].placement")
        cast.append({
            "name": person.name,
            "image": asset(person.image, f"cast-{i + 1}", f"cast[{i}].image", _image_extension),
            "crop": {"x": person.crop.x, "y": person.crop.y, "w": person.crop.w, "h": person.crop.h},
            "placement": {
                "cx": person.placement.cx,
                "cy": person.placement.cy,
                "height": person.placement.height,
            },
            "voice": person.voice,
            "lang": person.lang,
        })
    lines = []
    for i, line in enumerate(scene.lines):
        _require_type(line, Line, f"lines[{i}]")
        lines.append({
            "speaker": line.speaker,
            "text": line.text,
            "voice": line.voice,
            "speed": line.speed,
            "pause_after": line.pause_after,
            "audio": asset(line.audio, f"line-{i + 1}", f"lines[{i}].audio", _audio_extension),
        })
    document = {
        "format": PROJECT_FORMAT,
        "version": PROJECT_VERSION,
        "title": scene.title,
        "prompt": scene.prompt,
        "negative_prompt": scene.negative_prompt,
        "settings": {
            "mode": settings.mode,
            "resolution": settings.resolution,
            "aspect": settings.aspect,
            "steps": settings.steps,
            "text_guide": settings.text_guide,
            "audio_guide": settings.audio_guide,
            "shift": settings.shift,
            "seed": settings.seed,
            "color_correction": settings.color_correction,
            "teacache": settings.teacache,
            "teacache_threshold": settings.teacache_threshold,
            "apg": settings.apg,
            "subtitles": settings.subtitles,
            "frame_num": settings.frame_num,
        },
        "background": {
            "kind": background.kind,
            "color": background.color,
            "image": asset(background.image, "background", "background.image", _image_extension),
        },
        "cast": cast,
        "lines": lines,
    }
    return document, assets


def scene_from_document(document: object, assets: Mapping[str, bytes],
                        used: set[str] | None = None) -> Scene:
    """Validate a project document (every field, every referenced asset decoded) and build the
    Scene. Names of the assets it referenced are added to `used`."""
    used = set() if used is None else used
    _check_format_and_version(document)  # first: a newer version may have other fields
    top = _object(document, "", _TOP_FIELDS)
    settings = _read_settings(top["settings"])
    background = _read_background(top["background"], assets, used)
    cast = _read_cast(top["cast"], assets, used)
    lines = _read_lines(top["lines"], len(cast), assets, used)
    scene = Scene(
        cast=cast,
        lines=lines,
        prompt=_text(top["prompt"], "prompt", MAX_PROMPT_CHARS),
        negative_prompt=_text(top["negative_prompt"], "negative_prompt", MAX_PROMPT_CHARS),
        settings=settings,
        background=background,
        title=_text(top["title"], "title", MAX_TITLE_CHARS),
    )
    _check_scene_rules(scene)
    return scene


def check_scene(scene: Scene) -> None:
    """Raise ProjectError for the first problem that would stop this scene from saving or
    rendering (the same rules load_project applies)."""
    document, assets = scene_to_document(scene)
    scene_from_document(document, assets)


_TOP_FIELDS = ("format", "version", "title", "prompt", "negative_prompt", "settings",
               "background", "cast", "lines")
_SETTINGS_FIELDS = ("mode", "resolution", "aspect", "steps", "text_guide", "audio_guide", "shift",
                    "seed", "color_correction", "teacache", "teacache_threshold", "apg",
                    "subtitles", "frame_num")


def _check_format_and_version(document: object) -> None:
    if not isinstance(document, dict):
        raise ProjectError(f"project.json: must be an object, not {_kind(document)}")
    if document.get("format") != PROJECT_FORMAT:
        raise ProjectError(f"format: {document.get('format')!r} is not {PROJECT_FORMAT!r}; "
                           "this is not a Duet Studio project")
    if "version" not in document:
        raise ProjectError("project.json: missing field 'version'")
    version = _integer(document["version"], "version", 1, 2**31)
    if version > PROJECT_VERSION:
        raise ProjectError(
            f"version: {version} — this project was made by a newer Duet Studio (this one reads "
            f"version {PROJECT_VERSION}); update Duet Studio to open it"
        )


def _read_settings(value: object) -> Settings:
    d = _object(value, "settings", _SETTINGS_FIELDS)
    shift = d["shift"]
    return Settings(
        mode=_choice(d["mode"], "settings.mode", MODES),
        resolution=_choice(d["resolution"], "settings.resolution", RESOLUTIONS),
        aspect=_choice(d["aspect"], "settings.aspect", tuple(ASPECTS)),
        steps=_integer(d["steps"], "settings.steps", *STEPS_RANGE),
        text_guide=_number(d["text_guide"], "settings.text_guide", *GUIDE_RANGE),
        audio_guide=_number(d["audio_guide"], "settings.audio_guide", *GUIDE_RANGE),
        shift=None if shift is None else _number(shift, "settings.shift", *SHIFT_RANGE),
        seed=_integer(d["seed"], "settings.seed", *SEED_RANGE),
        color_correction=_boolean(d["color_correction"], "settings.color_correction"),
        teacache=_boolean(d["teacache"], "settings.teacache"),
        teacache_threshold=_number(d["teacache_threshold"], "settings.teacache_threshold",
                                   *TEACACHE_THRESHOLD_RANGE),
        apg=_boolean(d["apg"], "settings.apg"),
        subtitles=_choice(d["subtitles"], "settings.subtitles", SUBTITLES),
        frame_num=_frame_num(d["frame_num"], "settings.frame_num"),
    )


def _frame_num(value: object, path: str) -> int:
    frames = _integer(value, path, *FRAME_NUM_RANGE)
    if (frames - 1) % 4:
        raise ProjectError(f"{path}: {frames} is not 4n+1 (the video VAE packs 4 frames "
                           "per latent after the first); use e.g. 81")
    return frames


def _read_background(value: object, assets: Mapping[str, bytes], used: set[str]) -> Background:
    d = _object(value, "background", ("kind", "color", "image"))
    return Background(
        kind=_choice(d["kind"], "background.kind", BACKGROUND_KINDS),
        color=_color(d["color"], "background.color"),
        image=_image_asset(d["image"], "background.image", assets, used),
    )


def _read_cast(value: object, assets: Mapping[str, bytes], used: set[str]) -> list[Person]:
    items = _list(value, "cast")
    if not MIN_CAST <= len(items) <= MAX_CAST:
        people = "person" if len(items) == 1 else "people"
        raise ProjectError(f"cast: has {len(items)} {people}; a scene needs {MIN_CAST} to "
                           f"{MAX_CAST} people")
    cast = []
    for i, item in enumerate(items):
        path = f"cast[{i}]"
        d = _object(item, path, ("name", "image", "crop", "placement", "voice", "lang"))
        name = _text(d["name"], f"{path}.name", MAX_NAME_CHARS)
        if not name.strip():
            raise ProjectError(f"{path}.name: is empty; give this person a name")
        cast.append(Person(
            name=name,
            image=_image_asset(d["image"], f"{path}.image", assets, used),
            crop=_read_crop(d["crop"], f"{path}.crop"),
            placement=_read_placement(d["placement"], f"{path}.placement"),
            voice=_voice(d["voice"], f"{path}.voice"),
            lang=_pattern(d["lang"], f"{path}.lang", _LANG, "a language code such as 'en-us'"),
        ))
    return cast


def _read_crop(value: object, path: str) -> Crop:
    d = _object(value, path, ("x", "y", "w", "h"))
    crop = Crop(
        x=_number(d["x"], f"{path}.x", 0.0, 1.0),
        y=_number(d["y"], f"{path}.y", 0.0, 1.0),
        w=_number(d["w"], f"{path}.w", 0.0, 1.0),
        h=_number(d["h"], f"{path}.h", 0.0, 1.0),
    )
    for name, size in (("w", crop.w), ("h", crop.h)):
        if size <= 0.0:
            raise ProjectError(f"{path}.{name}: {size!r} must be positive (an empty crop)")
    # A small tolerance: x + w is often computed in floats from pixel sizes.
    if crop.x + crop.w > 1.0 + 1e-6:
        raise ProjectError(f"{path}: x + w = {crop.x + crop.w:.6g} reaches past the right edge "
                           "of the image (must be ≤ 1)")
    if crop.y + crop.h > 1.0 + 1e-6:
        raise ProjectError(f"{path}: y + h = {crop.y + crop.h:.6g} reaches past the bottom edge "
                           "of the image (must be ≤ 1)")
    return crop


def _read_placement(value: object, path: str) -> Placement:
    d = _object(value, path, ("cx", "cy", "height"))
    return Placement(
        cx=_number(d["cx"], f"{path}.cx", 0.0, 1.0),
        cy=_number(d["cy"], f"{path}.cy", 0.0, 1.0),
        height=_number(d["height"], f"{path}.height", *PLACEMENT_HEIGHT_RANGE),
    )


def _read_lines(value: object, cast_size: int, assets: Mapping[str, bytes],
                used: set[str]) -> list[Line]:
    items = _list(value, "lines")
    if not items:
        raise ProjectError("lines: the script is empty; write at least one line")
    if len(items) > MAX_LINES:
        raise ProjectError(f"lines: {len(items)} lines (limit {MAX_LINES}); split the scene")
    lines = []
    for i, item in enumerate(items):
        path = f"lines[{i}]"
        d = _object(item, path, ("speaker", "text", "voice", "speed", "pause_after", "audio"))
        speaker = _integer(d["speaker"], f"{path}.speaker", 0, cast_size - 1,
                           why=f" (the cast has {cast_size} people)")
        text = _text(d["text"], f"{path}.text", MAX_LINE_CHARS)
        audio_path = f"{path}.audio"
        audio = None
        overlap_limit = PAUSE_RANGE[0]
        if d["audio"] is not None:
            name = _asset_name(d["audio"], audio_path, assets, used)
            audio = assets[name]
            # A line with its own audio may overlap the next line by its whole length: that is
            # how simultaneous speech (MultiTalk "para") is written.
            overlap_limit = min(PAUSE_RANGE[0], -audio_duration(audio, audio_path))
        if not text.strip() and audio is None:
            raise ProjectError(f"{path}.text: is empty; write the line or attach audio to it")
        voice = d["voice"]
        pause = _number(d["pause_after"], f"{path}.pause_after", overlap_limit, PAUSE_RANGE[1])
        lines.append(Line(
            speaker=speaker,
            text=text,
            voice=None if voice is None else _voice(voice, f"{path}.voice"),
            speed=_number(d["speed"], f"{path}.speed", *SPEED_RANGE),
            pause_after=pause,
            audio=audio,
        ))
    return lines


def _check_scene_rules(scene: Scene) -> None:
    """Rules that tie fields together."""
    kind = scene.background.kind
    if kind == "image" and scene.background.image is None:
        raise ProjectError('background.image: is missing; kind "image" needs a background photo')
    if kind == "blur" and all(person.image is None for person in scene.cast):
        raise ProjectError('background.kind: "blur" blurs the first portrait, but no one has a '
                           'portrait; choose "color" or "image"')
    for i, person in enumerate(scene.cast):
        if person.image is None and kind != "image":
            raise ProjectError(
                f"cast[{i}].image: is missing; give {person.name!r} a portrait, or use a group "
                'photo (background.kind "image") with their crop as their box in it'
            )


# ----------------------------------------------------------------------------- field checks


def _object(value: object, path: str, names: tuple[str, ...]) -> dict[str, Any]:
    where = path or "project.json"
    if not isinstance(value, dict):
        raise ProjectError(f"{where}: must be an object, not {_kind(value)}")
    for name in names:
        if name not in value:
            raise ProjectError(f"{where}: missing field {name!r}")
    unknown = [key for key in value if key not in names]
    if unknown:
        raise ProjectError(f"{where}: unknown field {unknown[0]!r} "
                           f"(expected only: {', '.join(names)})")
    return value


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ProjectError(f"{path}: must be a list, not {_kind(value)}")
    return value


def _text(value: object, path: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ProjectError(f"{path}: must be a string, not {_kind(value)}")
    if len(value) > max_chars:
        raise ProjectError(f"{path}: is {len(value)} characters long (limit {max_chars})")
    return value


def _integer(value: object, path: str, low: int, high: int, why: str = "") -> int:
    # bool is a subclass of int in Python; true/false are not numbers in a project file.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProjectError(f"{path}: must be an integer, not {_kind(value)}")
    if not low <= value <= high:
        raise ProjectError(f"{path}: {value} is out of range {low}–{high}{why}")
    return int(value)


def _number(value: object, path: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProjectError(f"{path}: must be a number, not {_kind(value)}")
    number = float(value) + 0.0  # + 0.0 turns -0.0 into 0.0: equal scenes, equal bytes
    if not math.isfinite(number):
        raise ProjectError(f"{path}: {number} is not a finite number")
    if not low <= number <= high:
        raise ProjectError(f"{path}: {number!r} is out of range {_num(low)}–{_num(high)}")
    return number


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ProjectError(f"{path}: must be true or false, not {_kind(value)}")
    return value


def _choice(value: object, path: str, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        shown = repr(value) if isinstance(value, str) else _kind(value)
        raise ProjectError(f"{path}: {shown} is not one of {', '.join(options)}")
    return value


def _pattern(value: object, path: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str):
        raise ProjectError(f"{path}: must be a string, not {_kind(value)}")
    if not pattern.fullmatch(value):
        raise ProjectError(f"{path}: {value!r} is not {what}")
    return value


def _voice(value: object, path: str) -> str:
    return _pattern(value, path, _VOICE_ID, "a voice id such as 'af_heart' or 'espeak:en-us'")


def _color(value: object, path: str) -> str:
    return _pattern(value, path, _COLOR, "a colour written #rrggbb")


def _asset_name(value: object, path: str, assets: Mapping[str, bytes], used: set[str]) -> str:
    name = _pattern(value, path, _ASSET_NAME, "an asset name such as 'assets/cast-1.png'")
    if name not in assets:
        raise ProjectError(f"{path}: {name} is not in the project archive")
    used.add(name)
    return name


def _image_asset(value: object, path: str, assets: Mapping[str, bytes],
                 used: set[str]) -> bytes | None:
    if value is None:
        return None
    data = assets[_asset_name(value, path, assets, used)]
    decode_image(data, path)
    return data


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _num(x: float) -> str:
    return f"{x:g}" if x != int(x) else f"{x:.1f}"


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def _require_type(value: object, expected: type, path: str) -> None:
    if not isinstance(value, expected):
        raise ProjectError(f"{path}: must be a {expected.__name__}, not {type(value).__name__}")


def _image_extension(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"  # rejected by validation with a clear message


def _audio_extension(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data.startswith(b"fLaC"):
        return "flac"
    if data.startswith(b"OggS"):
        return "ogg"
    return "bin"


# ----------------------------------------------------------------------------- project files

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest zip date: fixed so equal scenes give equal bytes


def save_project(scene: Scene) -> bytes:
    """The project file's bytes. Validates first (raises ProjectError like load_project), and
    writes canonical values, so equal scenes always give identical bytes."""
    document, assets = scene_to_document(scene)
    canonical = scene_from_document(document, assets)
    document, assets = scene_to_document(canonical)
    entries = dict(assets)
    entries[PROJECT_DOCUMENT] = (
        json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    ).encode("utf-8")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.create_system = 3  # Unix; the default depends on the OS that saves
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            # Images, FLAC and OGG are compressed already; deflate only what shrinks.
            compressible = name == PROJECT_DOCUMENT or name.endswith(".wav")
            info.compress_type = zipfile.ZIP_DEFLATED if compressible else zipfile.ZIP_STORED
            archive.writestr(info, entries[name], compresslevel=6 if compressible else None)
    return buffer.getvalue()


def load_project(data: bytes) -> Scene:
    """Validate a project file completely and return its Scene; ProjectError otherwise."""
    entries = _read_archive(data)
    document = _parse_document(entries.pop(PROJECT_DOCUMENT))
    used: set[str] = set()
    scene = scene_from_document(document, entries, used)
    for name in sorted(entries):
        if name not in used:
            raise ProjectError(f"archive entry {name!r}: not referenced by project.json; "
                               "remove it from the archive")
    return scene


def save_project_file(scene: Scene, path: str | os.PathLike[str]) -> None:
    """Write atomically (temporary file + rename) so a crash never leaves half a project."""
    target = Path(path)
    data = save_project(scene)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_project_file(path: str | os.PathLike[str]) -> Scene:
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > MAX_PROJECT_BYTES:
            raise ProjectError(f"{file}: the project is {_mb(size)} "
                               f"(limit {_mb(MAX_PROJECT_BYTES)})")
        data = file.read_bytes()
    except OSError as e:
        raise ProjectError(f"{file}: cannot read the project ({e.strerror or e})") from None
    return load_project(data)


def _read_archive(data: bytes) -> dict[str, bytes]:
    """The archive's entries by name, after checking every entry is safe to read and small."""
    if len(data) > MAX_PROJECT_BYTES:
        raise ProjectError(f"archive: the project is {_mb(len(data))} "
                           f"(limit {_mb(MAX_PROJECT_BYTES)})")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ProjectError("archive: not a Duet Studio project (not a zip archive)") from None
    except NotImplementedError as e:  # a header claiming a zip version Python cannot read
        raise ProjectError(f"archive: unsupported zip format ({e}); save the project again") \
            from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise ProjectError(f"archive: {len(infos)} entries (limit {MAX_ENTRIES})")
        seen: set[str] = set()
        declared_total = 0
        files = []
        for info in infos:
            name = info.orig_filename
            _check_entry_name(name)
            if name in seen:
                raise ProjectError(f"archive entry {name!r}: appears twice")
            seen.add(name)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ProjectError(f"archive entry {name!r}: is a symbolic link")
            if info.flag_bits & 0x1:
                raise ProjectError(f"archive entry {name!r}: is encrypted")
            if info.is_dir():
                if name != ASSETS_FOLDER:  # zip tools often add the folder itself; harmless
                    raise ProjectError(f"archive entry {name!r}: unexpected folder")
                continue
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ProjectError(f"archive entry {name!r}: unsupported compression "
                                   f"(method {info.compress_type}); use deflate")
            limit = MAX_DOCUMENT_BYTES if name == PROJECT_DOCUMENT else max(MAX_IMAGE_BYTES,
                                                                            MAX_AUDIO_BYTES)
            # Declared sizes are checked before anything is inflated (zip bombs); zipfile then
            # stops at the declared size and checks the CRC, so a lying header fails too.
            if info.file_size > limit:
                raise ProjectError(f"archive entry {name!r}: declares {_mb(info.file_size)} "
                                   f"uncompressed (limit {_mb(limit)})")
            declared_total += info.file_size
            if declared_total > MAX_PROJECT_BYTES:
                raise ProjectError(f"archive: entries declare more than {_mb(MAX_PROJECT_BYTES)} "
                                   "uncompressed in all")
            files.append(info)
        if PROJECT_DOCUMENT not in seen:
            raise ProjectError("archive: project.json is missing; not a Duet Studio project")
        entries = {}
        for info in files:
            try:
                with archive.open(info) as stream:
                    content = stream.read(info.file_size + 1)
            # zlib.error: a corrupt deflate stream; NotImplementedError: a mangled header.
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, zlib.error,
                    NotImplementedError) as e:
                raise ProjectError(f"archive entry {info.orig_filename!r}: corrupt ({e})") from None
            if len(content) != info.file_size:
                raise ProjectError(f"archive entry {info.orig_filename!r}: corrupt "
                                   "(size differs from its header)")
            entries[info.orig_filename] = content
    return entries


def _check_entry_name(name: str) -> None:
    """Only `project.json` and `assets/<name>` belong in a project; anything that could escape
    a folder on extraction is named as such."""
    if "\\" in name:
        raise ProjectError(f"archive entry {name!r}: backslash in the path")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise ProjectError(f"archive entry {name!r}: absolute path")
    if ".." in name.split("/"):
        raise ProjectError(f"archive entry {name!r}: path escapes the project ('..')")
    if name not in (PROJECT_DOCUMENT, ASSETS_FOLDER) and not _ASSET_NAME.fullmatch(name):
        raise ProjectError(f"archive entry {name!r}: not part of a Duet Studio project "
                           "(only project.json and assets/<name>)")


def _parse_document(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProjectError(f"project.json: not UTF-8 text ({e})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys,
                          parse_constant=_no_special_numbers)
    except RecursionError:  # thousands of nested [ or {: no project nests deeper than 4
        raise ProjectError("project.json: arrays and objects nest too deeply") from None
    except json.JSONDecodeError as e:
        raise ProjectError(f"project.json: invalid JSON at line {e.lineno} column {e.colno} "
                           f"({e.msg})") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ProjectError(f"project.json: field {key!r} appears twice in one object")
        result[key] = value
    return result


def _no_special_numbers(name: str) -> Any:
    raise ProjectError(f"project.json: {name} is not a valid number")


# ----------------------------------------------------------------------------- MultiTalk JSON

# Keys of the official MultiTalk input JSON (generate_multitalk.py); InfiniteTalk names the
# reference "cond_video" (an image or a video) instead of "cond_image".
_MULTITALK_FIELDS = ("prompt", "cond_image", "cond_video", "audio_type", "cond_audio", "bbox",
                     "tts_audio")
_PERSON_KEYS = ("person1", "person2")
_VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
# Official default person regions without a bbox: 5% margins inside each half (face_scale=0.05).
_FACE_SCALE = 0.05
# Speakers of audio files have no TTS voice; these are what they get if the user adds lines.
_AUDIO_SPEAKER_VOICES = (default_voice("en-us", FEMALE), default_voice("en-us", MALE))


def import_multitalk_json(path: str | os.PathLike[str]) -> Scene:
    """A Scene from an official MultiTalk/InfiniteTalk input JSON.

    The cond_image is a group photo with both people: it becomes Background(kind="image") and
    each person has image=None and crop = their bbox ([row_min, col_min, row_max, col_max] in
    source pixels) as fractions; without bbox, the official default: each half of the photo
    with 5% margins. cond_audio gives one line per person with its audio and empty text:
    audio_type "add" (default) = person1 then person2; "para" = both at once, written as
    lines[0].pause_after = −(person1's duration). tts_audio (used when cond_audio is empty)
    gives the lines from its "(s1) … (s2) …" text via shared.script.parse_script, and the voices
    by file stem (weights/Kokoro-82M/voices/af_heart.pt → "af_heart"). Lines follow each other
    without pause, as in the official pipeline. Relative paths are looked up next to the JSON
    first, then in the working directory. The canvas is 480p at the aspect nearest the photo.
    """
    json_path = Path(path)
    try:
        size = json_path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise ProjectError(f"{json_path}: {_mb(size)} is too large for a MultiTalk JSON")
        raw = json_path.read_bytes()
    except OSError as e:
        raise ProjectError(f"{json_path}: cannot read ({e.strerror or e})") from None
    try:
        document = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_no_duplicate_keys,
                              parse_constant=_no_special_numbers)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProjectError(f"{json_path}: not valid JSON ({e})") from None
    if not isinstance(document, dict):
        raise ProjectError(f"{json_path}: must hold a JSON object, not {_kind(document)}")
    unknown = [key for key in document if key not in _MULTITALK_FIELDS]
    if unknown:
        raise ProjectError(f"{unknown[0]}: unknown MultiTalk field (expected: prompt, "
                           "cond_image, audio_type, cond_audio, bbox, tts_audio)")
    folder = json_path.resolve().parent

    if "prompt" not in document:
        raise ProjectError("prompt: missing; describe the scene (the official format needs it)")
    prompt = _text(document["prompt"], "prompt", MAX_PROMPT_CHARS)
    photo_key = _photo_key(document)
    photo_path = _find_file(document[photo_key], photo_key, folder)
    if photo_path.suffix.lower() in _VIDEO_SUFFIXES:
        raise ProjectError(f"{photo_key}: {photo_path} is a video; Duet Studio starts from a "
                           "photo — export its first frame as PNG and point the JSON at it")
    photo = _read_limited(photo_path, photo_key, MAX_IMAGE_BYTES)
    width, height = decode_image(photo, photo_key).size

    audio_type = document.get("audio_type", "add")
    _choice(audio_type, "audio_type", ("add", "para"))
    cond_audio = _object_of_strings(document.get("cond_audio", {}), "cond_audio", _PERSON_KEYS)
    tts = document.get("tts_audio")
    if cond_audio:
        voices = list(_AUDIO_SPEAKER_VOICES)
        keys = list(cond_audio)
        lines = _lines_from_audio(cond_audio, audio_type, folder)
    elif tts is not None:
        voices, lines = _lines_from_tts(tts)
        keys = list(_PERSON_KEYS[:len(voices)])
    else:
        raise ProjectError("cond_audio: is empty and there is no tts_audio; give each person "
                           "an audio file (cond_audio.person1, cond_audio.person2)")
    if len(keys) < MIN_CAST:
        raise ProjectError(f"cond_audio: only {', '.join(keys)}; Duet Studio makes videos of "
                           "two people — add person2")

    crops = _crops_from_bbox(document.get("bbox"), keys, photo, width, height)
    placements = default_placements(len(keys))
    cast = [
        Person(name=f"Person {i + 1}", image=None, crop=crops[i], placement=placements[i],
               voice=voices[i], lang=_voice_lang(voices[i]))
        for i in range(len(keys))
    ]
    scene = Scene(
        cast=cast,
        lines=lines,
        prompt=prompt,
        settings=Settings(resolution="480p", aspect=nearest_aspect(width, height)),
        background=Background(kind="image", image=photo),
        title=json_path.stem,
    )
    check_scene(scene)
    return scene


def _voice_lang(voice: str) -> str:
    info = KNOWN_VOICES.get(voice)
    return info.lang if info is not None else "en-us"  # the official TTS speaks American English


def _photo_key(document: dict[str, Any]) -> str:
    present = [key for key in ("cond_image", "cond_video") if key in document]
    if len(present) != 1:
        raise ProjectError("cond_image: give exactly one reference photo (cond_image, or "
                           "cond_video as InfiniteTalk names it)")
    return present[0]


def _object_of_strings(value: object, path: str, keys: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ProjectError(f"{path}: must be an object, not {_kind(value)}")
    for key, item in value.items():
        if key not in keys:
            raise ProjectError(f"{path}.{key}: unknown key (expected {', '.join(keys)})")
        if not isinstance(item, str):
            raise ProjectError(f"{path}.{key}: must be a file path, not {_kind(item)}")
    if "person2" in value and "person1" not in value:
        raise ProjectError(f"{path}: has person2 but no person1")
    return {key: value[key] for key in keys if key in value}


def _lines_from_audio(cond_audio: dict[str, str], audio_type: str, folder: Path) -> list[Line]:
    clips = []
    for key, name in cond_audio.items():
        where = f"cond_audio.{key}"
        data = _read_limited(_find_file(name, where, folder), where, MAX_AUDIO_BYTES)
        clips.append((data, audio_duration(data, where)))
    lines = []
    for speaker, (data, seconds) in enumerate(clips):
        last = speaker == len(clips) - 1
        # "para": the next person starts together with this one.
        pause = -seconds if audio_type == "para" and not last else 0.0
        lines.append(Line(speaker=speaker, text="", pause_after=pause, audio=data))
    return lines


def _lines_from_tts(tts: object) -> tuple[list[str], list[Line]]:
    if not isinstance(tts, dict):
        raise ProjectError(f"tts_audio: must be an object, not {_kind(tts)}")
    allowed = ("text", "human1_voice", "human2_voice")
    for key in tts:
        if key not in allowed:
            raise ProjectError(f"tts_audio.{key}: unknown key (expected {', '.join(allowed)})")
    text = _text(tts.get("text"), "tts_audio.text", MAX_LINE_CHARS * MAX_LINES)
    voices = []
    for key in ("human1_voice", "human2_voice"):
        if key in tts:
            voice_path = _text(tts[key], f"tts_audio.{key}", 1000)
            # weights/Kokoro-82M/voices/af_heart.pt → "af_heart"
            voice = Path(voice_path.replace("\\", "/")).stem
            voices.append(_voice(voice, f"tts_audio.{key}"))
    if len(voices) < MIN_CAST:
        raise ProjectError("tts_audio.human2_voice: missing; Duet Studio makes videos of two "
                           "people — give the second speaker a voice")
    try:
        script = parse_script(text)
    except ScriptError as e:
        raise ProjectError(f"tts_audio.text: {e}") from None
    lines = []
    for i, script_line in enumerate(script.lines):
        # parse_script puts "(sN)" at index N−1, so (s1) is person1 whoever speaks first.
        if script_line.speaker >= len(voices):
            raise ProjectError(f"tts_audio.text: line {i + 1} is spoken by "
                               f"{script.speakers[script_line.speaker]!r}, but only (s1) and (s2) "
                               "have voices (human1_voice, human2_voice)")
        lines.append(Line(speaker=script_line.speaker, text=script_line.text, pause_after=0.0))
    return voices, lines


def _crops_from_bbox(bbox: object, keys: list[str], photo: bytes, width: int,
                     height: int) -> list[Crop]:
    """Crops in fractions of the upright photo (width × height)."""
    if bbox is None:
        # The official default regions: rows [5%, 95%) of the height, and the same margins
        # inside the left and the right half (integer pixels as the official code computes them).
        row_min, row_max = int(height * _FACE_SCALE), int(height * (1 - _FACE_SCALE))
        half = width // 2
        col_min, col_max = int(half * _FACE_SCALE), int(half * (1 - _FACE_SCALE))
        boxes = [(row_min, col_min, row_max, col_max),
                 (row_min, col_min + half, row_max, col_max + half)]
        return [_pixel_crop(box, width, height) for box in boxes[:len(keys)]]
    if not isinstance(bbox, dict):
        raise ProjectError(f"bbox: must be an object, not {_kind(bbox)}")
    if sorted(bbox) != sorted(keys):
        raise ProjectError(f"bbox: has {', '.join(sorted(bbox)) or 'no boxes'}; give one box per "
                           f"person in the audio ({', '.join(keys)})")
    # The official code ignores EXIF orientation, so its boxes are in the stored pixel grid.
    orientation = _exif_orientation(photo)
    stored_width, stored_height = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    crops = []
    for key in keys:  # by name: person1's box goes with person1's audio
        where = f"bbox.{key}"
        box = bbox[key]
        if not isinstance(box, list) or len(box) != 4:
            raise ProjectError(f"{where}: must be [row_min, col_min, row_max, col_max]")
        for j, value in enumerate(box):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ProjectError(f"{where}[{j}]: must be a number of pixels, not {_kind(value)}")
        row_min, col_min, row_max, col_max = (int(v) for v in box)  # official: int() slicing
        row_max, col_max = min(row_max, stored_height), min(col_max, stored_width)
        if row_min < 0 or col_min < 0 or row_min >= row_max or col_min >= col_max:
            raise ProjectError(
                f"{where}: {box} is not a box inside the {stored_width}×{stored_height} photo "
                "(expected [row_min, col_min, row_max, col_max] with min < max — rows first)"
            )
        upright = _upright_box((row_min, col_min, row_max, col_max), stored_width,
                               stored_height, orientation)
        crops.append(_pixel_crop(upright, width, height))
    return crops


def _exif_orientation(data: bytes) -> int:
    with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
        return image.getexif().get(0x0112, 1)  # 0x0112: the EXIF Orientation tag


def _pixel_crop(box: tuple[int, int, int, int], width: int, height: int) -> Crop:
    row_min, col_min, row_max, col_max = box
    return Crop(x=col_min / width, y=row_min / height, w=(col_max - col_min) / width,
                h=(row_max - row_min) / height)


def _upright_box(box: tuple[int, int, int, int], stored_width: int, stored_height: int,
                 orientation: int) -> tuple[int, int, int, int]:
    """A box of the stored pixels as a box of the upright image (EXIF orientation 1–8, as
    ImageOps.exif_transpose turns it). Works on pixel edges, so it stays exact."""
    w, h = stored_width, stored_height
    maps: dict[int, Callable[[int, int], tuple[int, int]]] = {  # (col, row) → upright (col, row)
        1: lambda x, y: (x, y),
        2: lambda x, y: (w - x, y),
        3: lambda x, y: (w - x, h - y),
        4: lambda x, y: (x, h - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (h - y, x),
        7: lambda x, y: (h - y, w - x),
        8: lambda x, y: (y, w - x),
    }
    to_upright = maps.get(orientation, maps[1])
    row_min, col_min, row_max, col_max = box
    (x0, y0), (x1, y1) = to_upright(col_min, row_min), to_upright(col_max, row_max)
    return min(y0, y1), min(x0, x1), max(y0, y1), max(x0, x1)


def _find_file(name: str, where: str, folder: Path) -> Path:
    if not isinstance(name, str) or not name:
        raise ProjectError(f"{where}: must be a file path, not {_kind(name)}")
    given = Path(name).expanduser()
    candidates = [given] if given.is_absolute() else [folder / given, Path.cwd() / given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = " and ".join(str(c) for c in candidates)
    raise ProjectError(f"{where}: file {name!r} not found (looked at {looked})")


def _read_limited(path: Path, where: str, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise ProjectError(f"{where}: {path} is {_mb(size)} (limit {_mb(limit)})")
        return path.read_bytes()
    except OSError as e:
        raise ProjectError(f"{where}: cannot read {path} ({e.strerror or e})") from None
