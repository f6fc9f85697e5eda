"""Import of the official MultiTalk / InfiniteTalk input JSON (keys as in MeiGen-AI/MultiTalk
examples/*.json: prompt, cond_image, audio_type, cond_audio.personN, bbox.personN, tts_audio)."""
import json

import numpy as np
import pytest
import soundfile
from PIL import Image

from shared.scene import (
    Background,
    Crop,
    Line,
    ProjectError,
    default_placements,
    import_multitalk_json,
    load_project,
    save_project,
)


def write_photo(path, size=(400, 200), mode="RGBA"):
    Image.new(mode, size, (30, 60, 90, 255)[: len(mode)]).save(path)
    return path.read_bytes()


def write_wav(path, samples, rate=16000):
    soundfile.write(path, np.full(samples, 0.1, np.float32), rate, subtype="PCM_16")
    return path.read_bytes()


@pytest.fixture
def example(tmp_path):
    """A folder like the official examples: a group photo (RGBA PNG), a .WAV and a .wav."""
    folder = tmp_path / "examples"
    folder.mkdir()
    files = {
        "photo": write_photo(folder / "multi.png"),
        "first": write_wav(folder / "1.WAV", 8000),   # 0.5 s
        "second": write_wav(folder / "2.wav", 12000),  # 0.75 s
    }
    return folder, files


def write_json(folder, document, name="talk.json"):
    path = folder / name
    path.write_text(json.dumps(document))
    return path


def official(**changes):
    document = {
        "prompt": "A man and a woman talk in a car.",
        "cond_image": "multi.png",
        "audio_type": "add",
        "cond_audio": {"person1": "1.WAV", "person2": "2.wav"},
        "bbox": {"person1": [20, 10, 180, 190], "person2": [20, 210, 180, 390]},
    }
    document.update(changes)
    return {key: value for key, value in document.items() if value is not None}


def import_error(path):
    with pytest.raises(ProjectError) as caught:
        import_multitalk_json(path)
    return str(caught.value)


def test_add_mode_with_bbox_makes_a_group_photo_scene(example):
    folder, files = example
    scene = import_multitalk_json(write_json(folder, official()))

    assert scene.title == "talk"
    assert scene.prompt == "A man and a woman talk in a car."
    assert scene.background == Background("image", "#1e1e24", files["photo"])
    # bbox is [row_min, col_min, row_max, col_max] in photo pixels (400×200).
    assert [p.crop for p in scene.cast] == [Crop(10 / 400, 20 / 200, 180 / 400, 160 / 200),
                                            Crop(210 / 400, 20 / 200, 180 / 400, 160 / 200)]
    assert [p.image for p in scene.cast] == [None, None]
    assert [p.name for p in scene.cast] == ["Person 1", "Person 2"]
    assert [p.placement for p in scene.cast] == default_placements(2)
    # "add": person1's audio, then person2's, back to back.
    assert scene.lines == [Line(0, "", pause_after=0.0, audio=files["first"]),
                           Line(1, "", pause_after=0.0, audio=files["second"])]
    assert (scene.settings.resolution, scene.settings.aspect) == ("480p", "16:9")


def test_para_mode_starts_the_second_person_with_the_first(example):
    folder, files = example
    scene = import_multitalk_json(write_json(folder, official(audio_type="para")))
    assert [line.pause_after for line in scene.lines] == [-0.5, 0.0]  # −(person1's 0.5 s)


def test_audio_type_defaults_to_add(example):
    folder, _ = example
    document = official()
    del document["audio_type"]
    scene = import_multitalk_json(write_json(folder, document))
    assert [line.pause_after for line in scene.lines] == [0.0, 0.0]


def test_without_bbox_each_person_gets_the_official_half_with_5_percent_margins(example):
    folder, _ = example
    scene = import_multitalk_json(write_json(folder, official(bbox=None)))
    # 400×200 photo: rows [int(200·0.05), int(200·0.95)) = [10, 190); halves of 200 columns
    # with margins [10, 190) and [210, 390).
    assert [p.crop for p in scene.cast] == [Crop(10 / 400, 10 / 200, 180 / 400, 180 / 200),
                                            Crop(210 / 400, 10 / 200, 180 / 400, 180 / 200)]


def test_tts_audio_gives_lines_and_voices_by_file_stem(example):
    folder, _ = example
    document = official(
        audio_type="para",
        cond_audio={},
        tts_audio={
            "text": "(s1) do you know multi-talk? (s2) yes, I know it, that's amazing! (s1) Me too.",
            "human1_voice": "weights/Kokoro-82M/voices/af_heart.pt",
            "human2_voice": "weights/Kokoro-82M/voices/bm_george.pt",
        },
    )
    scene = import_multitalk_json(write_json(folder, document))
    assert [(p.voice, p.lang) for p in scene.cast] == [("af_heart", "en-us"), ("bm_george", "en-gb")]
    # The official pipeline speaks the turns back to back, whatever audio_type says.
    assert scene.lines == [Line(0, "do you know multi-talk?", pause_after=0.0),
                           Line(1, "yes, I know it, that's amazing!", pause_after=0.0),
                           Line(0, "Me too.", pause_after=0.0)]


def test_tts_with_one_voice_is_refused_as_a_single_person_video(example):
    folder, _ = example
    document = official(cond_audio={}, bbox=None,
                        tts_audio={"text": "Hello.", "human1_voice": "voices/af_heart.pt"})
    assert import_error(write_json(folder, document)).startswith(
        "tts_audio.human2_voice: missing; Duet Studio makes videos of two people")


def test_tts_speaker_without_voice_is_named(example):
    folder, _ = example
    document = official(cond_audio={}, tts_audio={
        "text": "(s1) Hi. (s3) Hello.", "human1_voice": "af_heart.pt", "human2_voice": "am_adam.pt"})
    assert import_error(write_json(folder, document)) == (
        "tts_audio.text: line 2 is spoken by 'Speaker 3', but only (s1) and (s2) have voices "
        "(human1_voice, human2_voice)")


def test_imported_scene_saves_and_loads(example):
    folder, _ = example
    scene = import_multitalk_json(write_json(folder, official(audio_type="para")))
    assert load_project(save_project(scene)) == scene


def test_paths_resolve_next_to_the_json_first_then_the_working_directory(example, monkeypatch):
    folder, files = example
    # Official examples name files from the repository root: "examples/multi.png".
    monkeypatch.chdir(folder.parent)
    (folder / "json").mkdir()
    path = write_json(folder / "json", official(
        cond_image="examples/multi.png",
        cond_audio={"person1": "examples/1.WAV", "person2": "examples/2.wav"}))
    scene = import_multitalk_json(path)
    assert scene.background.image == files["photo"]
    assert scene.lines[0].audio == files["first"]


def test_a_missing_file_names_the_path_and_where_it_looked(example, monkeypatch, tmp_path):
    folder, _ = example
    monkeypatch.chdir(tmp_path)
    path = write_json(folder, official(cond_audio={"person1": "1.WAV", "person2": "gone.wav"}))
    assert import_error(path) == (
        f"cond_audio.person2: file 'gone.wav' not found (looked at {folder / 'gone.wav'} and "
        f"{tmp_path / 'gone.wav'})")


def test_infinitetalk_cond_video_naming_a_photo_is_accepted(example):
    folder, files = example
    document = official(cond_image=None, cond_video="multi.png")
    assert import_multitalk_json(write_json(folder, document)).background.image == files["photo"]


def test_a_video_reference_is_refused_with_the_fix(example):
    folder, _ = example
    (folder / "clip.mp4").write_bytes(b"\0" * 64)
    message = import_error(write_json(folder, official(cond_image=None, cond_video="clip.mp4")))
    assert message.startswith("cond_video:")
    assert "export its first frame as PNG" in message


@pytest.mark.parametrize("changes, message", [
    ({"negative": "x"}, "negative: unknown MultiTalk field"),
    ({"prompt": 3}, "prompt: must be a string, not a number (3)"),
    ({"audio_type": "mix"}, "audio_type: 'mix' is not one of add, para"),
    ({"cond_audio": ["1.WAV", "2.wav"]}, "cond_audio: must be an object, not a list"),
    ({"cond_audio": {"person1": "1.WAV", "person3": "2.wav"}},
     "cond_audio.person3: unknown key (expected person1, person2)"),
    ({"cond_audio": {"person1": 1, "person2": "2.wav"}},
     "cond_audio.person1: must be a file path, not a number (1)"),
    ({"cond_audio": {"person1": "1.WAV"}, "bbox": None},
     "cond_audio: only person1; Duet Studio makes videos of two people — add person2"),
    ({"bbox": {"person1": [20, 10, 180, 190]}},
     "bbox: has person1; give one box per person in the audio (person1, person2)"),
    ({"bbox": {"person1": [20, 10, 180], "person2": [20, 210, 180, 390]}},
     "bbox.person1: must be [row_min, col_min, row_max, col_max]"),
    ({"bbox": {"person1": [20, 10, 180, True], "person2": [20, 210, 180, 390]}},
     "bbox.person1[3]: must be a number of pixels, not a boolean (true)"),
    ({"bbox": {"person1": [180, 10, 20, 190], "person2": [20, 210, 180, 390]}},
     "bbox.person1: [180, 10, 20, 190] is not a box inside the 400×200 photo (expected "
     "[row_min, col_min, row_max, col_max] with min < max — rows first)"),
    ({"cond_audio": {}}, "cond_audio: is empty and there is no tts_audio; give each person an "
                         "audio file (cond_audio.person1, cond_audio.person2)"),
])
def test_wrong_keys_and_types_are_named(example, changes, message):
    folder, _ = example
    assert import_error(write_json(folder, official(**changes))).startswith(message)


def test_prompt_and_photo_are_required(example):
    folder, _ = example
    document = official()
    del document["prompt"]
    assert import_error(write_json(folder, document)).startswith("prompt: missing")
    assert import_error(write_json(folder, official(cond_image=None))).startswith(
        "cond_image: give exactly one reference photo")


def test_corrupt_audio_names_the_key(example):
    folder, _ = example
    (folder / "bad.wav").write_bytes(b"RIFF0000WAVEnope")
    path = write_json(folder, official(cond_audio={"person1": "1.WAV", "person2": "bad.wav"}))
    assert import_error(path).startswith("cond_audio.person2: not a readable WAV, FLAC or OGG")


def test_not_json_is_a_project_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{")
    assert import_error(path).startswith(f"{path}: not valid JSON")


def test_a_bbox_on_an_exif_rotated_photo_follows_the_person(tmp_path):
    # Stored 200×100 pixels, EXIF orientation 6: shown upright as 100×200. The official code
    # ignores EXIF, so the bbox counts stored pixels; a red patch marks the person there.
    stored = Image.new("RGB", (200, 100), (255, 255, 255))
    stored.paste((255, 0, 0), (20, 10, 80, 50))  # cols 20..80, rows 10..50
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    write_wav(tmp_path / "a.wav", 8000)
    write_wav(tmp_path / "b.wav", 8000)
    path = write_json(tmp_path, official(
        cond_image="photo.jpg", cond_audio={"person1": "a.wav", "person2": "b.wav"},
        bbox={"person1": [10, 20, 50, 80], "person2": [60, 100, 90, 190]}))
    crop = import_multitalk_json(path).cast[0].crop
    assert (crop.x, crop.y, crop.w, crop.h) == pytest.approx((0.5, 0.1, 0.4, 0.3))
    upright = Image.open(tmp_path / "photo.jpg")
    upright = upright.transpose(Image.Transpose.ROTATE_270)  # what orientation 6 means
    assert upright.size == (100, 200)
    left, top = crop.x * 100, crop.y * 200
    right, bottom = left + crop.w * 100, top + crop.h * 200
    red = np.asarray(upright)[int(top) + 2:int(bottom) - 2, int(left) + 2:int(right) - 2]
    assert red[..., 0].min() > 200 and red[..., 1].max() < 60
