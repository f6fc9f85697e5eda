"""The studio's session state: autosave (nothing typed is lost on a reload or a restart), the
project file in the sidebar, the daemon banner, errors as messages (studio.state, studio.widgets,
studio.app). Runs the real app with Streamlit's AppTest; no daemon answers here (the address is a
free port), so this also checks that every page stays usable while the daemon is down.

Also the harness the other studio tests use: `studio_env`, `studio` (with a daemon) and `page_app`."""
from __future__ import annotations

import io
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import free_port
from shared.scene import Crop, Line, ProjectError, load_project, save_project
from studio import state
from test_studio_faces import draw_portrait

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "studio" / "app.py")
TIMEOUT_S = 60


@pytest.fixture
def studio_env(tmp_path, monkeypatch):
    """Point the studio at a fresh autosave folder and at no daemon (a port nobody listens on);
    tests that need a daemon set DUET_DAEMON again."""
    monkeypatch.setenv("DUET_STUDIO_DIR", str(tmp_path / "studio"))
    monkeypatch.setenv("DUET_DAEMON", f"tcp://127.0.0.1:{free_port()}")
    return tmp_path / "studio"


@pytest.fixture
def studio(studio_env, module_daemon, monkeypatch):
    """`studio_env` with the module's real daemon answering."""
    monkeypatch.setenv("DUET_DAEMON", module_daemon.address)
    return studio_env


def _page_script(name: str) -> None:
    import importlib

    import streamlit as st

    from studio.app import run_page

    name = st.session_state.get("test.page", name)   # see go_to
    run_page(importlib.import_module(f"studio.views.{name}").render, name)


def page_app(name: str) -> AppTest:
    """One page of the studio, with what surrounds every page (autosave, sidebar), as app.py
    runs it (AppTest cannot switch between st.navigation pages made from functions)."""
    return AppTest.from_function(_page_script, args=(name,), default_timeout=TIMEOUT_S)


def go_to(at: AppTest, name: str) -> AppTest:
    """The same session on another page (as clicking it in the navigation would)."""
    at.session_state["test.page"] = name
    return at.run()


def complete_scene():
    scene = state.new_scene()
    for i, person in enumerate(scene.cast):
        person.image = draw_portrait(seed=i)
        person.crop = Crop(0.1, 0.05, 0.8, 0.8)
    scene.lines = [Line(0, "Hello there."), Line(1, "Hi!")]
    return scene


def test_a_typed_name_is_there_again_in_a_new_browser_session(studio_env):
    first = AppTest.from_file(APP, default_timeout=TIMEOUT_S).run()
    first.text_input(key=state_key(first, "Name", 0)).input("Ada").run()
    assert first.text_input(key=state_key(first, "Name", 0)).value == "Ada"
    assert (studio_env / "autosave.duet").is_file()

    again = AppTest.from_file(APP, default_timeout=TIMEOUT_S).run()   # a reload: a new session
    assert again.text_input(key=state_key(again, "Name", 0)).value == "Ada"
    assert again.exception == []


def state_key(at: AppTest, label: str, index: int) -> str:
    """The key of the index-th text input with this label."""
    return [w.key for w in at.text_input if w.label == label][index]


def test_an_unfinished_scene_is_autosaved_and_read_back_as_it_was(tmp_path):
    scene = state.new_scene()
    scene.cast[0].name = "Ada"
    scene.cast[1].image = draw_portrait()
    scene.lines = [Line(1, "", voice="espeak:en-us", speed=1.25, pause_after=-0.5)]
    with pytest.raises(ProjectError):   # not a valid project: person 1 has no portrait
        save_project(scene)
    path = tmp_path / "autosave.duet"
    state.write_autosave(scene, path)
    loaded, note = state.read_autosave(path)
    assert (loaded, note) == (scene, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["autosave.duet"]   # no temp files


def test_a_complete_scene_is_autosaved_as_a_project_anyone_can_open(tmp_path):
    scene = complete_scene()
    path = tmp_path / "autosave.duet"
    state.write_autosave(scene, path)
    assert load_project(path.read_bytes()) == load_project(save_project(scene))


def test_an_unreadable_autosave_is_kept_aside_and_a_new_scene_starts(studio_env):
    studio_env.mkdir(parents=True)
    (studio_env / "autosave.duet").write_bytes(b"not a zip")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S).run()
    assert at.exception == []
    [warning] = [w.value for w in at.warning if "autosaved project could not be read" in w.value]
    assert str(studio_env / "autosave.duet.unreadable") in warning
    assert (studio_env / "autosave.duet.unreadable").read_bytes() == b"not a zip"
    assert [w.value for w in at.text_input if w.label == "Name"] == ["Person 1", "Person 2"]


def test_an_unreachable_daemon_shows_how_to_start_it_and_editing_still_works(studio_env):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S).run()
    address = os.environ["DUET_DAEMON"]
    assert [w.value for w in at.main.warning][0:1] == [
        f"The daemon is not answering at {address}. Start it with `./run_daemon.sh` (or "
        "`python -m daemon`), then try again; editing works meanwhile."]
    assert [e.value for e in at.sidebar.error] == [f"Not connected · {address}"]
    at.text_input(key=state_key(at, "Name", 1)).input("Grace").run()
    assert load_project_draft(studio_env).cast[1].name == "Grace"
    assert at.exception == []


def load_project_draft(folder: Path):
    scene, note = state.read_autosave(folder / "autosave.duet")
    assert note is None
    return scene


def test_save_is_offered_once_the_project_is_complete(studio_env):
    at = page_app("script").run()
    [save] = [b for b in at.sidebar.button if b.label == "Save project (.duet)"]
    assert save.disabled
    assert "Not a complete project yet — lines: the script is empty; write at least one " \
        "line. Your work is autosaved meanwhile." in [c.value for c in at.sidebar.caption]

    state.write_autosave(complete_scene(), studio_env / "autosave.duet")
    at = page_app("script").run()   # a new session reads the autosave
    assert [b.label for b in at.sidebar.get("download_button")] == ["Save project (.duet)"]


def test_opening_a_project_file_replaces_the_scene(studio_env):
    scene = complete_scene()
    scene.cast[0].name = "Opened"
    at = page_app("cast").run()
    opener = next(u for u in at.sidebar.file_uploader if u.label == "Open a project")
    opener.set_value(("talk.duet", save_project(scene), "application/zip")).run()
    assert at.exception == []
    assert [s.value for s in at.success] == ["Opened talk.duet."]
    assert [w.value for w in at.text_input if w.label == "Name"][:2] == ["Opened", "Person 2"]
    assert load_project_draft(studio_env) == load_project(save_project(scene))


def test_opening_a_broken_project_says_what_is_wrong(studio_env):
    at = page_app("cast").run()
    opener = next(u for u in at.sidebar.file_uploader if u.label == "Open a project")
    broken = io.BytesIO()
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("readme.txt", "hello")
    opener.set_value(("broken.duet", broken.getvalue(), "application/zip")).run()
    assert at.exception == []
    assert [e.value for e in at.sidebar.error if "Opening" in e.value] == [
        "Opening broken.duet: archive entry 'readme.txt': not part of a Duet Studio project "
        "(only project.json and assets/<name>)"]


def _failing_page() -> None:
    from studio.app import run_page

    def render() -> None:
        raise RuntimeError("a bug in a page")

    run_page(render, "broken")


def test_a_bug_in_a_page_is_a_message_not_a_traceback(studio_env):
    at = AppTest.from_function(_failing_page, default_timeout=TIMEOUT_S).run()
    assert at.exception == []
    assert [e.value for e in at.main.error] == [
        "Something went wrong on this page (RuntimeError: a bug in a page). Your work is kept; "
        "reload the page, and report this with the studio's log if it repeats."]


def test_a_new_project_starts_from_an_empty_scene(studio_env):
    scene = complete_scene()
    state.write_autosave(replace(scene, title="Old"), studio_env / "autosave.duet")
    at = page_app("cast").run()
    next(b for b in at.sidebar.button if b.label == "Start a new project").click().run()
    assert [s.value for s in at.success] == ["Started a new project."]
    assert load_project_draft(studio_env) == state.new_scene()
