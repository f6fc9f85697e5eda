"""A line's own audio instead of TTS (issue 4): attached on the Script page by uploading a file
or recording with the microphone, checked with shared.scene's rules, played, removed, autosaved,
kept in the project file, and heard in the whole dialogue for exactly its length (AppTest
against a real daemon with espeak-ng voices; studio.line_audio directly)."""
from __future__ import annotations

import io
import re

import numpy as np
import pyarrow.ipc
import pytest
import soundfile

from conftest import tone_wav
from shared.scene import (MAX_AUDIO_BYTES, PAUSE_RANGE, Line, ProjectError, load_project,
                          save_project)
from studio import state
from studio.line_audio import (OwnAudio, accepted, attach_audio, inspect_audio, pause_floor,
                               remove_audio)
from test_studio_script import DIALOGUE
from test_studio_state import complete_scene, load_project_draft, page_app, studio, studio_env  # noqa: F401


def script_page(scene, folder):
    """The Script page opened on `scene` (autosaved in the studio folder first)."""
    state.write_autosave(scene, folder / "autosave.duet")
    return page_app("script").run()


def encoded(seconds: float, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    out = io.BytesIO()
    soundfile.write(out, (0.3 * np.sin(2 * np.pi * 330.0 * t)).astype(np.float32), rate,
                    format=fmt, subtype=subtype)
    return out.getvalue()


def noise(size: int = 4000) -> bytes:
    return np.random.default_rng(7).bytes(size)


# ----------------------------------------------------------------------------- the checks


def test_an_attached_wav_is_kept_byte_for_byte_with_its_length():
    line, wav = Line(1, "I did."), tone_wav(1.5)
    own = attach_audio(line, wav, "take.wav")
    assert line.audio is wav
    assert own == OwnAudio(seconds=1.5, kind="WAV")
    assert (own.label, own.mime) == ("1.5 s", "audio/wav")
    assert (line.text, line.pause_after) == ("I did.", 0.3)


@pytest.mark.parametrize("fmt, subtype, kind, mime", [
    ("FLAC", None, "FLAC", "audio/flac"),
    ("OGG", "VORBIS", "OGG", "audio/ogg"),
    ("OGG", "OPUS", "OGG", "audio/ogg"),
])
def test_flac_and_ogg_files_are_accepted_too(fmt, subtype, kind, mime):
    own = inspect_audio(encoded(0.75, 48000, fmt, subtype), "take")
    assert (own.seconds, own.kind, own.mime) == (0.75, kind, mime)


def test_an_mp3_is_refused_and_the_message_names_what_works():
    line = Line(0, "Hello.")
    with pytest.raises(ProjectError, match=r"^take\.mp3: MPEG-1/2 Audio audio is not supported; "
                                           r"use WAV, FLAC or OGG$"):
        attach_audio(line, encoded(1.0, 44100, "MP3"), "take.mp3")
    assert line.audio is None


def test_a_corrupt_file_is_refused_and_the_line_keeps_its_voice():
    line = Line(0, "Hello.")
    with pytest.raises(ProjectError, match=r"^take\.wav: not a readable WAV, FLAC or OGG file"):
        attach_audio(line, noise(), "take.wav")
    assert line.audio is None


def test_a_file_over_the_size_limit_is_refused_with_the_fix():
    with pytest.raises(ProjectError, match=r"^big\.wav: the audio is 50\.0 MB \(limit 50\.0 MB\); "
                                           r"shorten it or save it as FLAC$"):
        inspect_audio(b"RIFF" + bytes(MAX_AUDIO_BYTES), "big.wav")


def test_audio_over_ten_minutes_is_refused():
    long_take = encoded(600.5, 8000, "WAV", "PCM_U8")
    with pytest.raises(ProjectError,
                       match=r"^long\.wav: the audio lasts over 600 s \(the limit\)$"):
        inspect_audio(long_take, "long.wav")


def test_the_accepted_files_are_said_in_words_from_the_scene_limits():
    assert accepted() == "WAV, FLAC or OGG (Vorbis or Opus), up to 10 minutes and 50 MB"


def test_a_line_with_its_own_audio_may_overlap_the_next_by_its_whole_length():
    assert pause_floor(None) == PAUSE_RANGE[0] == -10.0
    assert pause_floor(3.0) == -10.0
    assert pause_floor(12.5) == -12.5


def test_removing_the_audio_brings_back_the_voice_and_an_overlap_a_voice_may_have():
    line = Line(0, "", pause_after=-12.0, audio=tone_wav(12.0, rate=8000))
    remove_audio(line)
    assert line == Line(0, "", pause_after=-10.0)


def test_a_shorter_audio_in_place_of_a_long_one_shortens_an_overlap_it_no_longer_allows():
    line = Line(0, "", pause_after=-12.0, audio=tone_wav(12.0, rate=8000))
    attach_audio(line, tone_wav(2.0), "short.wav")
    assert line.pause_after == -10.0


# ----------------------------------------------------------------------------- the Script page


def paste(at, text: str = DIALOGUE):
    at.text_area[0].input(text)
    return next(b for b in at.button if b.label == "Read the script").click().run()


def open_own_audio(at, line: int):
    """Click the :material/mic: button of line `line` (0-based): its menu opens."""
    [key] = [k for k in at.session_state.keys() if k.endswith(f".line.{line}.own_audio")]
    at.session_state[key] = True
    return at.run()


def uploader(at):
    [found] = [u for u in at.main.file_uploader if u.label in ("Upload a file",
                                                               "Replace with a file")]
    return found


def line_texts(at) -> list[str]:
    """The list of lines under the table ("**2. Bob** · …")."""
    return [m.value for m in at.main.markdown if re.match(r"\*\*\d+\. ", m.value)]


def test_an_uploaded_wav_becomes_the_lines_audio_and_can_be_removed(studio):
    at = open_own_audio(paste(page_app("script").run()), 1)
    wav = tone_wav(1.5)
    uploader(at).set_value(("bob.wav", wav, "audio/wav")).run()
    assert at.exception == [] and [e.value for e in at.main.error] == []
    assert [line.audio for line in load_project_draft(studio).lines] == [None, wav, None]
    assert line_texts(at)[1] == ("**2. Bob** · I did, it was orange. · "
                                 ":material/mic: own audio, 1.5 s")
    assert list(at.data_editor[0].value["own_audio"]) == ["", "1.5 s", ""]
    captions = " ".join(c.value for c in at.main.caption)
    assert "Voice and speed do not apply to this line; its text, if any, is the subtitle." \
        in captions
    assert ":material/mic: Line 2 plays the speaker's own audio" in captions
    assert "**Line 2 plays Bob's own audio** · 1.5 s" in [m.value for m in at.main.markdown]
    assert len(at.get("audio")) == 1                                   # hear it in the menu
    assert uploader(at).label == "Replace with a file" and uploader(at).value is None

    next(b for b in at.button if b.label == "Remove it (use the voice again)").click().run()
    assert [line.audio for line in load_project_draft(studio).lines] == [None, None, None]
    assert line_texts(at)[1] == "**2. Bob** · I did, it was orange."
    assert list(at.data_editor[0].value["own_audio"]) == ["", "", ""]
    assert uploader(at).label == "Upload a file"


def test_a_microphone_recording_becomes_the_lines_audio(studio):
    at = open_own_audio(paste(page_app("script").run()), 0)
    recording = tone_wav(2.0, rate=24000)
    [mic] = at.main.audio_input
    assert mic.label == "Record"
    mic.set_value(("recording.wav", recording, "audio/wav")).run()
    assert at.exception == [] and [e.value for e in at.main.error] == []
    assert load_project_draft(studio).lines[0].audio == recording
    assert line_texts(at)[0].endswith(" · :material/mic: own audio, 2.0 s")
    assert [m.label for m in at.main.audio_input] == ["Record again"]


def test_a_corrupt_file_is_refused_next_to_the_line_with_what_to_use(studio):
    at = open_own_audio(paste(page_app("script").run()), 1)
    uploader(at).set_value(("broken.wav", noise(), "audio/wav")).run()
    assert at.exception == []
    [error] = [e.value for e in at.main.error]
    assert error.startswith("broken.wav: not a readable WAV, FLAC or OGG file (Format not recognised.)")
    assert error.endswith(". Use WAV, FLAC or OGG (Vorbis or Opus), up to 10 minutes and 50 MB.")
    assert [line.audio for line in load_project_draft(studio).lines] == [None, None, None]
    at.run()   # the refusal stays beside the file as long as it sits in the uploader
    assert [e.value for e in at.main.error] == [error]
    assert line_texts(at)[1] == "**2. Bob** · I did, it was orange."


def test_a_line_with_its_own_audio_needs_no_text_and_saves_as_a_project(studio):
    scene = complete_scene()
    wav = tone_wav(1.25)
    scene.lines[1].audio = wav
    at = script_page(scene, studio)
    at.session_state[at.data_editor[0].key] = {"edited_rows": {1: {"text": None}},
                                               "added_rows": [], "deleted_rows": []}
    at.run()
    assert at.exception == []
    assert load_project_draft(studio).lines[1] == Line(1, "", audio=wav)
    assert line_texts(at)[1] == "**2. Person 2** · :material/mic: own audio, 1.2 s"
    [save] = [b for b in at.sidebar.get("download_button") if b.label == "Save project (.duet)"]
    assert not save.disabled
    assert load_project(save_project(load_project_draft(studio))).lines[1].audio == wav


def test_an_opened_project_brings_its_lines_own_audio(studio):
    at = page_app("script").run()
    project = complete_scene()
    flac = encoded(0.5, 16000, "FLAC")
    project.lines[0].audio = flac
    opener = next(u for u in at.sidebar.file_uploader if u.label == "Open a project")
    opener.set_value(("with-audio.duet", save_project(project), "application/zip")).run()
    assert at.exception == []
    assert load_project_draft(studio).lines[0].audio == flac
    assert line_texts(at)[0] == "**1. Person 1** · Hello there. · :material/mic: own audio, 0.5 s"


def test_a_line_with_its_own_audio_is_heard_without_the_daemon(studio_env):
    scene = complete_scene()
    scene.lines[0].audio = encoded(0.5, 16000, "FLAC")
    at = script_page(scene, studio_env)
    [b for b in at.button if b.label == ":material/play_arrow:"][0].click().run()
    assert at.exception == [] and [e.value for e in at.main.error] == []
    [player] = at.get("audio")
    assert player.proto.autoplay
    assert player.proto.url.endswith(".flac")   # the file itself, as it is


def test_the_table_keeps_each_lines_audio_and_the_overlap_it_allows(studio):
    scene = complete_scene()
    long_take = tone_wav(12.0, rate=8000)
    scene.lines = [Line(0, "One."), Line(1, "", pause_after=-12.0, audio=long_take),
                   Line(0, "Three.")]
    at = script_page(scene, studio)
    at.session_state[at.data_editor[0].key] = {
        "edited_rows": {2: {"text": "Three!"}},
        "added_rows": [{"speaker": 1, "text": "Four."}],
        "deleted_rows": [0],
    }
    at.run()
    assert at.exception == []
    assert load_project_draft(studio).lines == [
        Line(1, "", pause_after=-12.0, audio=long_take), Line(0, "Three!"), Line(1, "Four.")]


def test_a_moved_line_takes_its_audio_along(studio):
    scene = complete_scene()
    wav = tone_wav(1.0)
    scene.lines[0].audio = wav
    at = script_page(scene, studio)
    [b for b in at.button if b.label == ":material/arrow_downward:"][0].click().run()
    assert [line.audio for line in load_project_draft(studio).lines] == [None, wav]
    assert list(at.data_editor[0].value["own_audio"]) == ["", "1.0 s"]


def test_the_whole_dialogue_gives_the_line_exactly_its_audios_length(studio):
    at = open_own_audio(paste(page_app("script").run()), 1)
    uploader(at).set_value(("bob.wav", tone_wav(1.5), "audio/wav")).run()
    next(b for b in at.button if b.label == "Play the whole dialogue").click().run()
    assert at.exception == [] and [e.value for e in at.main.error] == []
    rows = timeline_rows(at)
    assert rows[1]["end"] - rows[1]["start"] == 1.5
    assert rows[2]["start"] == pytest.approx(rows[1]["end"] + 0.3)   # its pause after
    assert rows[1]["text"] == "I did, it was orange."


def timeline_rows(at) -> list[dict]:
    """The rows of the who-speaks-when chart, by line."""
    [chart] = at.get("vega_lite_chart")
    [dataset] = chart.proto.datasets   # the chart's table, as Arrow IPC bytes
    frame = pyarrow.ipc.open_stream(dataset.data.data).read_pandas()
    return sorted(frame.to_dict("records"), key=lambda row: row["line"])
