"""The Script page as a person uses it (AppTest): paste a script, edit the lines table, reorder,
hear a line and the whole dialogue with its timeline — against a real daemon (espeak-ng)."""
from __future__ import annotations

import pytest

from shared.scene import Line, save_project
from shared.script import ScriptError, parse_script
from studio import state
from studio.views.script import apply_script
from test_studio_state import (complete_scene, go_to, load_project_draft, page_app,  # noqa: F401
                                studio, studio_env)

DIALOGUE = "Alice: Did you see the sunrise?\nBob: I did, it was orange.\nAlice: Let's go again."


def paste(at, text: str):
    at.text_area[0].input(text)
    return next(b for b in at.button if b.label == "Read the script").click().run()


def line_texts(at) -> list[str]:
    return [m.value for m in at.main.markdown if m.value.startswith("**")]


def test_a_pasted_script_becomes_lines_and_names_the_cast(studio):
    at = paste(page_app("script").run(), DIALOGUE)
    assert at.exception == []
    assert [s.value for s in at.main.success] == ["Read 3 lines spoken by Alice, Bob."]
    scene = load_project_draft(studio)
    assert [p.name for p in scene.cast] == ["Alice", "Bob"]
    assert scene.lines == [Line(0, "Did you see the sunrise?"), Line(1, "I did, it was orange."),
                           Line(0, "Let's go again.")]
    assert line_texts(at) == ["**1. Alice** · Did you see the sunrise?",
                              "**2. Bob** · I did, it was orange.",
                              "**3. Alice** · Let's go again."]


def test_a_script_that_cannot_be_read_says_which_line_is_wrong(studio):
    at = paste(page_app("script").run(), "Just a title line\nAlice: Hello\nBob: Hi")
    assert at.exception == []
    [error] = [e.value for e in at.error]
    assert error.startswith("Reading the script: line 1: ")
    assert load_project_draft(studio).lines == []


def test_script_speakers_find_the_cast_member_of_the_same_name_first():
    scene = state.new_scene()
    scene.cast[0].name, scene.cast[1].name = "Bob", "Alice"
    summary = apply_script(scene, parse_script(DIALOGUE))
    assert summary == "Read 3 lines spoken by Alice, Bob."
    assert [line.speaker for line in scene.lines] == [1, 0, 1]
    assert [p.name for p in scene.cast] == ["Bob", "Alice"]


def test_numbered_speakers_keep_the_cast_names_and_a_third_speaker_joins_the_cast():
    scene = state.new_scene()
    scene.cast[0].name = "Ada"
    apply_script(scene, parse_script("(s1) Hi. (s2) Hello. (s3) Hey!"))
    assert [p.name for p in scene.cast] == ["Ada", "Person 2", "Person 3"]
    assert [line.speaker for line in scene.lines] == [0, 1, 2]


def test_more_speakers_than_a_scene_holds_is_an_error():
    script = parse_script("\n".join(f"P{i}: line {i}" for i in range(9)))
    with pytest.raises(ScriptError, match="the script has 9 speakers; a scene holds at most 8"):
        apply_script(state.new_scene(), script)


def test_pasting_again_can_add_after_the_lines(studio):
    at = paste(page_app("script").run(), DIALOGUE)
    next(c for c in at.checkbox if c.label.startswith("Add after")).check()
    paste(at, "Bob: One more thing.")
    assert [line.text for line in load_project_draft(studio).lines][-2:] == [
        "Let's go again.", "One more thing."]


def test_edits_in_the_table_change_the_lines(studio):
    at = paste(page_app("script").run(), DIALOGUE)
    editor = at.data_editor[0]
    at.session_state[editor.key] = {
        "edited_rows": {1: {"text": "I did! Bright orange.", "speed": 1.25, "voice": "espeak:en-gb"}},
        "added_rows": [{"speaker": 1, "text": "See you at six.", "pause_after": -0.2}],
        "deleted_rows": [0],
    }
    at.run()
    assert at.exception == []
    assert load_project_draft(studio).lines == [
        Line(1, "I did! Bright orange.", voice="espeak:en-gb", speed=1.25),
        Line(0, "Let's go again."),
        Line(1, "See you at six.", pause_after=-0.2),
    ]


def test_lines_move_up_and_down(studio):
    at = paste(page_app("script").run(), DIALOGUE)
    [b for b in at.button if b.label == ":material/arrow_downward:"][0].click().run()
    assert [line.text for line in load_project_draft(studio).lines] == [
        "I did, it was orange.", "Did you see the sunrise?", "Let's go again."]
    [b for b in at.button if b.label == ":material/arrow_upward:"][2].click().run()
    assert [line.text for line in load_project_draft(studio).lines] == [
        "I did, it was orange.", "Let's go again.", "Did you see the sunrise?"]
    assert line_texts(at)[0] == "**1. Bob** · I did, it was orange."
    # the table shows the new order too
    assert list(at.data_editor[0].value["text"]) == [
        "I did, it was orange.", "Let's go again.", "Did you see the sunrise?"]


def test_a_line_is_heard_through_the_daemon(studio):
    at = paste(page_app("script").run(), DIALOGUE)
    [b for b in at.button if b.label == ":material/play_arrow:"][1].click().run()
    assert at.exception == [] and [e.value for e in at.error] == []
    [player] = at.get("audio")
    assert player.proto.autoplay
    # espeak-ng stands in for Bob's Kokoro voice here, and says so
    assert ":material/info: voice am_michael is not installed — using espeak:en-us " \
           "(male, American English, robotic (espeak-ng)) instead" in \
        " ".join(c.value for c in at.caption)


def test_hearing_a_line_without_the_daemon_says_how_to_start_it(studio_env):
    state.write_autosave(complete_scene(), studio_env / "autosave.duet")
    at = page_app("script").run()
    [b for b in at.button if b.label == ":material/play_arrow:"][0].click().run()
    [error] = [e.value for e in at.main.error]
    assert error.startswith("Line 1: The daemon is not answering at tcp://127.0.0.1:")
    assert "./run_daemon.sh" in error
    assert at.get("audio") == []


def test_the_whole_dialogue_plays_with_a_timeline_of_who_speaks_when(studio):
    at = paste(page_app("script").run(), DIALOGUE)
    next(b for b in at.button if b.label == "Play the whole dialogue").click().run()
    assert at.exception == [] and [e.value for e in at.main.error] == []
    assert len(at.get("audio")) == 1
    [chart] = at.get("vega_lite_chart")
    spec = chart.proto.spec
    assert '"x2"' in spec and '"who"' in spec
    [total] = [c.value for c in at.caption if c.value.endswith(" s in all.")]
    seconds = float(total.split()[0])
    assert 3.0 < seconds < 10.0


def test_a_reopened_project_shows_its_own_lines_even_with_the_same_cast(studio):
    state.write_autosave(complete_scene(), studio / "autosave.duet")
    at = page_app("script").run()
    other = complete_scene()   # the same people, other lines
    other.lines = [Line(1, "A different first line."), Line(0, "And a reply.")]
    opener = next(u for u in at.sidebar.file_uploader if u.label == "Open a project")
    opener.set_value(("other.duet", save_project(other), "application/zip")).run()
    assert [line.text for line in load_project_draft(studio).lines] == [
        "A different first line.", "And a reply."]
    assert list(at.data_editor[0].value["text"]) == ["A different first line.", "And a reply."]


def test_removing_a_person_on_the_cast_page_keeps_the_lines_right(studio):
    scene = complete_scene()
    scene.cast.append(state.new_person(2, scene.cast[1].placement))
    scene.cast[2].name = "Cy"
    scene.lines = [Line(0, "One."), Line(2, "Three.")]
    state.write_autosave(scene, studio / "autosave.duet")
    at = page_app("script").run()
    go_to(at, "cast")
    [b for b in at.button if b.label == "Remove this person"][1].click().run()
    go_to(at, "script")
    assert load_project_draft(studio).lines == [Line(0, "One."), Line(1, "Three.")]
    assert line_texts(at) == ["**1. Person 1** · One.", "**2. Cy** · Three."]
