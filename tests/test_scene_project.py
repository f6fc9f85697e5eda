"""The project file: a versioned zip that saves deterministically and loads only when valid."""
import io
import json
import stat
import zipfile

import numpy as np
import pytest
import soundfile
from PIL import Image

from shared import scene as scene_module
from shared.scene import (
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_PROMPT,
    Background,
    Crop,
    Line,
    Person,
    Placement,
    ProjectError,
    Scene,
    Settings,
    check_scene,
    load_project,
    load_project_file,
    save_project,
    save_project_file,
    scene_to_document,
)


def image_bytes(size=(64, 80), color=(200, 40, 40), mode="RGB", fmt="PNG"):
    if mode == "RGBA":
        color = (*color, 128)
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format=fmt)
    return out.getvalue()


def wav_bytes(seconds, rate=16000):
    out = io.BytesIO()
    samples = 0.1 * np.sin(np.arange(int(seconds * rate)) * 0.05).astype(np.float32)
    soundfile.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def make_scene():
    return Scene(
        cast=[
            Person("Ada", image_bytes(mode="RGBA"), Crop(0.1, 0.0, 0.8, 0.9),
                   Placement(0.25, 0.575, 0.85), "af_heart", "en-us"),
            Person("Bo", image_bytes(color=(20, 90, 200), fmt="JPEG"), Crop(0.0, 0.0, 1.0, 1.0),
                   Placement(0.75, 0.575, 0.85), "am_michael", "en-us"),
        ],
        lines=[
            Line(0, "Hello there."),
            Line(1, "", speed=1.25, pause_after=-0.5, audio=wav_bytes(1.0)),
            Line(0, "Bye.", voice="bf_emma"),
        ],
        title="Greeting",
    )


def write_zip(entries, compress=zipfile.ZIP_DEFLATED):
    """A zip exactly as given (no validation), for crafting broken projects."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compress) as archive:
        for entry in entries:
            name, data = entry[0], entry[1]
            info = zipfile.ZipInfo(name)
            info.compress_type = compress
            if len(entry) > 2:
                info.external_attr = entry[2]
            archive.writestr(info, data)
    return out.getvalue()


def project_with(edit=None, extra_entries=(), drop_assets=()):
    """A project zip of make_scene() whose document went through `edit(document)` first."""
    document, assets = scene_to_document(make_scene())
    if edit:
        edit(document)
    entries = [(name, data) for name, data in sorted(assets.items()) if name not in drop_assets]
    entries.append(("project.json", json.dumps(document).encode()))
    return write_zip([*entries, *extra_entries])


def load_error(data):
    with pytest.raises(ProjectError) as caught:
        load_project(data)
    return str(caught.value)


# ---- round trip and determinism -------------------------------------------------------------


def test_save_then_load_gives_an_equal_scene():
    scene = make_scene()
    assert load_project(save_project(scene)) == scene


def test_saving_the_same_scene_twice_gives_identical_bytes():
    assert save_project(make_scene()) == save_project(make_scene())


def test_a_loaded_project_saves_back_to_the_same_bytes():
    data = save_project(make_scene())
    assert save_project(load_project(data)) == data


def test_equal_scenes_with_int_and_float_values_save_identically():
    as_floats = make_scene()
    as_ints = make_scene()
    as_ints.lines[0].speed = 1
    as_ints.settings.text_guide = 5
    as_ints.lines[1].pause_after = -0.5
    assert as_ints == as_floats
    assert save_project(as_ints) == save_project(as_floats)


def test_archive_layout_is_sorted_with_fixed_timestamps_and_original_image_bytes():
    scene = make_scene()
    with zipfile.ZipFile(io.BytesIO(save_project(scene))) as archive:
        names = [info.filename for info in archive.infolist()]
        assert names == ["assets/cast-1.png", "assets/cast-2.jpg", "assets/line-2.wav",
                         "project.json"]
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert archive.read("assets/cast-1.png") == scene.cast[0].image
        document = json.loads(archive.read("project.json"))
    assert document["format"] == "duet-project"
    assert document["version"] == 1
    assert document["cast"][0]["image"] == "assets/cast-1.png"
    assert document["lines"][1]["audio"] == "assets/line-2.wav"
    assert document["lines"][0]["audio"] is None


def test_defaults_are_the_documented_ones():
    scene = Scene(cast=[], lines=[])
    assert scene.prompt == DEFAULT_PROMPT
    assert DEFAULT_PROMPT.startswith("Two people are having a natural, friendly conversation")
    assert scene.negative_prompt == DEFAULT_NEGATIVE_PROMPT
    assert scene.background == Background("color", "#1e1e24", None)
    assert scene.settings == Settings("draft", "480p", "16:9", 40, 5.0, 4.0, None, 42, True,
                                      False, 0.3, False, "sidecar", 81)
    assert Settings().effective_shift() == 7.0
    assert Settings(resolution="720p").effective_shift() == 11.0
    assert Settings(shift=3.0).effective_shift() == 3.0


def test_voice_of_a_line_is_its_override_or_the_speakers_voice():
    scene = make_scene()
    assert [scene.voice_of(i) for i in range(3)] == ["af_heart", "am_michael", "bf_emma"]


def test_project_file_round_trip_on_disk(tmp_path):
    path = tmp_path / "talk.duet"
    save_project_file(make_scene(), path)
    assert load_project_file(path) == make_scene()
    assert [p.name for p in tmp_path.iterdir()] == ["talk.duet"]  # no temporary left behind


def test_loading_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(ProjectError, match=r"nothere\.duet: cannot read the project"):
        load_project_file(tmp_path / "nothere.duet")


def test_save_refuses_an_invalid_scene_with_the_load_message():
    scene = make_scene()
    scene.lines[0].speed = 3.0
    with pytest.raises(ProjectError, match=r"^lines\[0\]\.speed: 3\.0 is out of range 0\.5–2\.0$"):
        save_project(scene)
    with pytest.raises(ProjectError, match=r"^lines\[0\]\.speed"):
        check_scene(scene)


def test_save_names_a_non_bytes_image():
    scene = make_scene()
    scene.cast[1].image = "face.png"
    with pytest.raises(ProjectError, match=r"^cast\[1\]\.image: must be bytes or None, not str"):
        save_project(scene)


# ---- field validation: each message starts with the field path -----------------------------


def set_field(path, value):
    """An edit for project_with: set document[path...] = value."""
    def edit(document):
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


@pytest.mark.parametrize("path, value, message", [
    (("lines", 1, "speed"), 3.0, "lines[1].speed: 3.0 is out of range 0.5–2.0"),
    (("lines", 0, "speed"), 0.25, "lines[0].speed: 0.25 is out of range 0.5–2.0"),
    (("lines", 0, "pause_after"), -10.5, "lines[0].pause_after: -10.5 is out of range -10.0–10.0"),
    (("lines", 2, "pause_after"), 11, "lines[2].pause_after: 11.0 is out of range -10.0–10.0"),
    (("settings", "steps"), 0, "settings.steps: 0 is out of range 1–100"),
    (("settings", "steps"), 101, "settings.steps: 101 is out of range 1–100"),
    (("settings", "seed"), -1, "settings.seed: -1 is out of range 0–4294967295"),
    (("settings", "seed"), 2**32, "settings.seed: 4294967296 is out of range 0–4294967295"),
    (("settings", "text_guide"), 20.5, "settings.text_guide: 20.5 is out of range 0.0–20.0"),
    (("settings", "audio_guide"), -1, "settings.audio_guide: -1.0 is out of range 0.0–20.0"),
    (("settings", "shift"), 0.1, "settings.shift: 0.1 is out of range 0.5–20.0"),
    (("settings", "teacache_threshold"), 2.0,
     "settings.teacache_threshold: 2.0 is out of range 0.05–1.0"),
    (("settings", "frame_num"), 17, "settings.frame_num: 17 is out of range 29–201"),
    (("cast", 0, "crop", "x"), -0.1, "cast[0].crop.x: -0.1 is out of range 0.0–1.0"),
    (("cast", 1, "placement", "height"), 0.0,
     "cast[1].placement.height: 0.0 is out of range 0.05–2.0"),
    (("lines", 2, "speaker"), 2, "lines[2].speaker: 2 is out of range 0–1 (the cast has 2 people)"),
    (("lines", 2, "speaker"), -1, "lines[2].speaker: -1 is out of range 0–1 (the cast has 2 people)"),
])
def test_out_of_range_values_are_named_with_their_range(path, value, message):
    assert load_error(project_with(set_field(path, value))) == message


@pytest.mark.parametrize("path, value, message", [
    (("settings", "steps"), True, "settings.steps: must be an integer, not a boolean (true)"),
    (("settings", "steps"), 40.0, "settings.steps: must be an integer, not a number (40.0)"),
    (("settings", "seed"), "42", "settings.seed: must be an integer, not a string ('42')"),
    (("lines", 0, "speed"), True, "lines[0].speed: must be a number, not a boolean (true)"),
    (("lines", 0, "speaker"), False, "lines[0].speaker: must be an integer, not a boolean (false)"),
    (("settings", "teacache"), 1, "settings.teacache: must be true or false, not a number (1)"),
    (("settings", "color_correction"), None, "settings.color_correction: must be true or false, "
                                               "not null"),
    (("lines", 0, "text"), 5, "lines[0].text: must be a string, not a number (5)"),
    (("cast", 0, "crop"), [0, 0, 1, 1], "cast[0].crop: must be an object, not a list"),
    (("cast",), {}, "cast: must be a list, not an object"),
    (("settings", "mode"), "fast", "settings.mode: 'fast' is not one of draft, full"),
    (("settings", "aspect"), "21:9", "settings.aspect: '21:9' is not one of 16:9, 9:16, 1:1, 4:3, "
                                     "3:4"),
    (("settings", "resolution"), 480, "settings.resolution: a number (480) is not one of 480p, "
                                      "720p"),
    (("background", "color"), "red", "background.color: 'red' is not a colour written #rrggbb"),
    (("cast", 0, "voice"), "", "cast[0].voice: '' is not a voice id such as 'af_heart' or "
                               "'espeak:en-us'"),
    (("lines", 0, "voice"), "bad voice", "lines[0].voice: 'bad voice' is not a voice id such as "
                                         "'af_heart' or 'espeak:en-us'"),
])
def test_wrong_types_are_named_and_bool_is_not_a_number(path, value, message):
    assert load_error(project_with(set_field(path, value))) == message


def test_non_finite_numbers_are_rejected():
    data = project_with(set_field(("lines", 0, "speed"), float("nan")))
    assert load_error(data) == "project.json: NaN is not a valid number"


def test_unknown_field_is_named():
    message = load_error(project_with(set_field(("settings", "sampler"), "euler")))
    assert message.startswith("settings: unknown field 'sampler' (expected only: mode, ")


def test_missing_field_is_named():
    def drop_speed(document):
        del document["lines"][2]["speed"]
    assert load_error(project_with(drop_speed)) == "lines[2]: missing field 'speed'"


def test_crop_must_be_positive_and_inside_the_image():
    assert load_error(project_with(set_field(("cast", 0, "crop", "w"), 0))) == \
        "cast[0].crop.w: 0.0 must be positive (an empty crop)"
    message = load_error(project_with(set_field(("cast", 1, "crop", "x"), 0.5)))
    assert message == "cast[1].crop: x + w = 1.5 reaches past the right edge of the image (must be ≤ 1)"
    message = load_error(project_with(set_field(("cast", 0, "crop", "y"), 0.2)))
    assert message.startswith("cast[0].crop: y + h = 1.1 reaches past the bottom edge")


def test_cast_needs_two_to_eight_people():
    def one_person(document):
        document["cast"] = document["cast"][:1]
        for line in document["lines"]:
            line["speaker"] = 0
        document["lines"][1]["audio"] = None
    message = load_error(project_with(one_person, drop_assets={"assets/cast-2.jpg",
                                                               "assets/line-2.wav"}))
    assert message == "cast: has 1 person; a scene needs 2 to 8 people"

    def nine_people(document):
        document["cast"] = [dict(document["cast"][0]) for _ in range(9)]
    assert load_error(project_with(nine_people)) == "cast: has 9 people; a scene needs 2 to 8 people"


def test_the_script_needs_at_least_one_line():
    scene = make_scene()
    scene.lines = []
    with pytest.raises(ProjectError, match=r"^lines: the script is empty"):
        save_project(scene)


def test_text_length_limits():
    assert load_error(project_with(set_field(("lines", 0, "text"), "a" * 1001))) == \
        "lines[0].text: is 1001 characters long (limit 1000)"
    assert load_error(project_with(set_field(("cast", 0, "name"), "n" * 61))) == \
        "cast[0].name: is 61 characters long (limit 60)"
    assert load_error(project_with(set_field(("prompt",), "p" * 4001))) == \
        "prompt: is 4001 characters long (limit 4000)"


def test_a_line_needs_text_or_audio():
    assert load_error(project_with(set_field(("lines", 0, "text"), "  "))) == \
        "lines[0].text: is empty; write the line or attach audio to it"


def test_frame_num_must_be_4n_plus_1():
    message = load_error(project_with(set_field(("settings", "frame_num"), 80)))
    assert message.startswith("settings.frame_num: 80 is not 4n+1")


def test_a_line_with_audio_may_overlap_by_its_whole_length():
    scene = make_scene()
    scene.lines[1].audio = wav_bytes(12.0, rate=8000)
    scene.lines[1].pause_after = -12.0  # the next line starts with this one
    assert load_project(save_project(scene)).lines[1].pause_after == -12.0
    scene.lines[1].pause_after = -12.5
    with pytest.raises(ProjectError, match=r"^lines\[1\]\.pause_after: -12\.5 is out of range "
                                           r"-12\.0–10\.0$"):
        save_project(scene)


def test_a_person_without_portrait_needs_a_group_photo():
    scene = make_scene()
    scene.cast[1].image = None
    with pytest.raises(ProjectError, match=r"^cast\[1\]\.image: is missing; give 'Bo' a portrait"):
        save_project(scene)
    scene.background = Background("image", image=image_bytes(size=(320, 180)))
    assert load_project(save_project(scene)).cast[1].image is None


def test_background_kinds_need_their_image():
    scene = make_scene()
    scene.background = Background("image")
    with pytest.raises(ProjectError, match=r'^background\.image: is missing; kind "image"'):
        save_project(scene)
    scene.background = Background("blur")
    for person in scene.cast:
        person.image = None
    with pytest.raises(ProjectError, match=r'^background\.kind: "blur" blurs the first portrait'):
        save_project(scene)


# ---- images and audio -----------------------------------------------------------------------


def png_header_only(width, height):
    """A PNG whose header claims width×height but holds no pixel data."""
    import struct
    import zlib

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def with_asset(name, data):
    """make_scene()'s project with one asset's bytes replaced."""
    document, assets = scene_to_document(make_scene())
    assets[name] = data
    entries = sorted(assets.items()) + [("project.json", json.dumps(document).encode())]
    return write_zip(entries)


def test_image_pixel_count_is_checked_from_the_header_before_decoding():
    # 8000×6000 with no pixel data: decoding would fail as corrupt, so this message proves
    # the size was checked first.
    message = load_error(with_asset("assets/cast-1.png", png_header_only(8000, 6000)))
    assert message == ("cast[0].image: the image is 8000×6000 = 48.0 MP (limit 40 MP); "
                       "scale it down")


def test_a_decompression_bomb_beyond_pillows_own_limit_is_a_project_error():
    message = load_error(with_asset("assets/cast-1.png", png_header_only(20000, 20000)))
    assert message == "cast[0].image: the image has too many pixels (limit 40 MP)"


def test_oversized_image_bytes_are_rejected():
    big = image_bytes() + b"\0" * (20 * 1024 * 1024)
    message = load_error(with_asset("assets/cast-2.jpg", big))
    assert message.startswith("cast[1].image: the image is 20.0 MB (limit 20.0 MB)")


def test_corrupt_images_are_rejected():
    header_cut = image_bytes(size=(300, 300), fmt="JPEG")[:400]
    message = load_error(with_asset("assets/cast-2.jpg", header_cut))
    assert message.startswith("cast[1].image: the JPEG image is corrupt")
    noise = np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, format="PNG")
    pixels_cut = out.getvalue()[: len(out.getvalue()) // 2]
    message = load_error(with_asset("assets/cast-1.png", pixels_cut))
    assert message.startswith("cast[0].image: the PNG image is corrupt")
    message = load_error(with_asset("assets/cast-1.png", b"GIF89a not really"))
    assert message.startswith("cast[0].image: not a PNG, JPEG or WebP image")


def test_rgba_png_and_webp_images_are_accepted():
    scene = make_scene()
    scene.background = Background("color", image=image_bytes(fmt="WEBP"))
    loaded = load_project(save_project(scene))
    assert loaded.background.image == scene.background.image
    assert loaded.cast[0].image == scene.cast[0].image


def test_corrupt_audio_is_rejected():
    message = load_error(with_asset("assets/line-2.wav", b"RIFF\x10\x00\x00\x00WAVEjunk"))
    assert message.startswith("lines[1].audio: not a readable WAV, FLAC or OGG file")


def test_oversized_audio_is_rejected():
    scene = make_scene()
    scene.lines[1].audio = wav_bytes(1.0) + b"\0" * (50 << 20)
    with pytest.raises(ProjectError, match=r"^lines\[1\]\.audio: the audio is 50\.0 MB "
                                           r"\(limit 50\.0 MB\)"):
        save_project(scene)


def test_flac_audio_is_accepted():
    out = io.BytesIO()
    soundfile.write(out, np.zeros(8000, np.float32), 16000, format="FLAC")
    scene = make_scene()
    scene.lines[1].audio = out.getvalue()
    with zipfile.ZipFile(io.BytesIO(save_project(scene))) as archive:
        assert "assets/line-2.flac" in archive.namelist()
    assert load_project(save_project(scene)).lines[1].audio == out.getvalue()


# ---- archive safety -------------------------------------------------------------------------


def test_not_a_zip():
    assert load_error(b"hello") == "archive: not a Duet Studio project (not a zip archive)"


@pytest.mark.parametrize("name, message", [
    ("../evil.png", "archive entry '../evil.png': path escapes the project ('..')"),
    ("assets/../../evil.png", "archive entry 'assets/../../evil.png': path escapes the project ('..')"),
    ("/etc/passwd", "archive entry '/etc/passwd': absolute path"),
    ("C:/evil.png", "archive entry 'C:/evil.png': absolute path"),
    ("assets\\evil.png", "archive entry 'assets\\\\evil.png': backslash in the path"),
    ("notes.txt", "archive entry 'notes.txt': not part of a Duet Studio project "
                  "(only project.json and assets/<name>)"),
])
def test_entries_that_could_escape_the_archive_are_rejected(name, message):
    assert load_error(project_with(extra_entries=[(name, b"x")])) == message


def test_symlink_entries_are_rejected():
    link = (stat.S_IFLNK | 0o777) << 16
    data = project_with(extra_entries=[("assets/link.png", b"/etc/passwd", link)])
    assert load_error(data) == "archive entry 'assets/link.png': is a symbolic link"


def test_duplicate_entries_are_rejected():
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = project_with(extra_entries=[("assets/cast-1.png", image_bytes())])
    assert load_error(data) == "archive entry 'assets/cast-1.png': appears twice"


def test_zip_bomb_entry_is_rejected_by_its_declared_size():
    bomb = b"\0" * (60 * 1024 * 1024)  # deflates to ~60 kB
    data = project_with(extra_entries=[("assets/bomb.wav", bomb)])
    assert len(data) < 1024 * 1024
    assert load_error(data) == ("archive entry 'assets/bomb.wav': declares 60.0 MB uncompressed "
                                "(limit 50.0 MB)")


def test_declared_total_size_is_limited(monkeypatch):
    monkeypatch.setattr(scene_module, "MAX_PROJECT_BYTES", 3 * 1024 * 1024)
    zeros = b"\0" * (2 * 1024 * 1024)
    data = project_with(extra_entries=[("assets/a.wav", zeros), ("assets/b.wav", zeros)])
    assert len(data) < 1024 * 1024
    assert load_error(data) == "archive: entries declare more than 3.0 MB uncompressed in all"


def test_missing_referenced_asset():
    message = load_error(project_with(drop_assets={"assets/line-2.wav"}))
    assert message == "lines[1].audio: assets/line-2.wav is not in the project archive"


def test_extra_unreferenced_asset_is_rejected():
    data = project_with(extra_entries=[("assets/unused.png", image_bytes())])
    assert load_error(data) == ("archive entry 'assets/unused.png': not referenced by "
                                "project.json; remove it from the archive")


def test_a_folder_entry_for_assets_is_tolerated():
    assert load_project(project_with(extra_entries=[("assets/", b"")])) == make_scene()


def test_project_json_must_exist_and_parse():
    assert load_error(write_zip([("assets/a.png", image_bytes())])) == \
        "archive: project.json is missing; not a Duet Studio project"
    assert load_error(write_zip([("project.json", b"{not json")])).startswith(
        "project.json: invalid JSON at line 1 column 2")
    assert load_error(write_zip([("project.json", b'{"format": 1, "format": 2}')])) == \
        "project.json: field 'format' appears twice in one object"


def test_a_newer_version_says_so():
    def newer(document):
        document["version"] = 2
        document["storyboard"] = []  # a newer version may have fields this one does not know
    message = load_error(project_with(newer))
    assert message == ("version: 2 — this project was made by a newer Duet Studio (this one "
                       "reads version 1); update Duet Studio to open it")


def test_wrong_format_and_version_types():
    assert load_error(project_with(set_field(("format",), "other"))) == \
        "format: 'other' is not 'duet-project'; this is not a Duet Studio project"
    assert load_error(project_with(set_field(("version",), True))) == \
        "version: must be an integer, not a boolean (true)"
    assert load_error(project_with(set_field(("version",), 0))) == \
        "version: 0 is out of range 1–2147483648"


def test_audio_longer_than_ten_minutes_is_rejected():
    out = io.BytesIO()
    soundfile.write(out, np.zeros(8000 * 601, np.int16), 8000, format="WAV")
    scene = make_scene()
    scene.lines[1].audio = out.getvalue()
    with pytest.raises(ProjectError, match=r"^lines\[1\]\.audio: the audio lasts over 600 s"):
        save_project(scene)


def test_audio_formats_other_than_wav_flac_ogg_are_named():
    out = io.BytesIO()
    soundfile.write(out, np.zeros(1600, np.float32), 16000, format="AIFF")
    scene = make_scene()
    scene.lines[1].audio = out.getvalue()
    with pytest.raises(ProjectError, match=r"^lines\[1\]\.audio: AIFF \(Apple/SGI\) audio is not "
                                           r"supported; use WAV, FLAC or OGG$"):
        save_project(scene)


def test_espeak_voice_ids_with_variants_are_valid():
    scene = make_scene()
    scene.cast[1].voice = "espeak:en-us+f3"
    scene.lines[0].voice = "espeak:cmn"
    assert load_project(save_project(scene)) == scene
