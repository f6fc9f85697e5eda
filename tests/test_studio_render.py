"""The Render and Library pages as a person uses them (AppTest), against a real daemon on the
embedded default (draft backend, no MultiTalk weights): settings and presets, full mode explained
when it cannot run, submit, live progress, cancel, the result with its downloads; past renders
listed, re-opened, deleted."""
from __future__ import annotations

import pytest

from conftest import wait_for_event
from shared import protocol as p
from shared.scene import Line, Settings, load_project, save_project
from studio import state
from studio.views.render import PRESETS, apply_preset, preset_of
from test_studio_state import complete_scene, load_project_draft, page_app, studio, studio_env  # noqa: F401


@pytest.fixture
def watcher(module_daemon):
    return module_daemon.client(timeout=60)


def button(at, label: str):
    return next(b for b in at.button if b.label == label)


def wait_done(watcher, job_id: str) -> p.JobInfo:
    return watcher.wait(job_id)


def test_presets_set_their_fields_and_are_recognised():
    quality = apply_preset(Settings(mode="draft", seed=7), "Quality (40 steps)")
    assert (quality.mode, quality.steps, quality.text_guide, quality.audio_guide, quality.seed) == \
        ("full", 40, 5.0, 4.0, 7)
    fast = apply_preset(quality, "Fast (8-step LoRA)")
    assert (fast.steps, fast.text_guide, fast.audio_guide, fast.shift) == (8, 1.0, 2.0, 2.0)
    assert [preset_of(apply_preset(Settings(), name)) for name in PRESETS] == list(PRESETS)
    assert preset_of(Settings(mode="full", steps=30)) == "Custom"


def test_full_mode_says_what_to_download_when_multitalk_is_missing(studio):
    scene = complete_scene()
    scene.settings.mode = "full"
    state.write_autosave(scene, studio / "autosave.duet")
    at = page_app("render").run()
    [warning] = [w.value for w in at.warning if w.value.startswith("Full renders")]
    assert "weights/download.sh wan multitalk wav2vec" in warning
    assert button(at, "Render (full)").disabled
    # the draft still renders
    next(r for r in at.radio if r.label == "Preset").set_value("Draft preview").run()
    assert load_project_draft(studio).settings.mode == "draft"
    assert not button(at, "Render (draft)").disabled


def test_choosing_a_preset_changes_the_settings(studio):
    at = page_app("render").run()
    next(r for r in at.radio if r.label == "Preset").set_value("Fast (8-step LoRA)").run()
    settings = load_project_draft(studio).settings
    assert (settings.mode, settings.steps, settings.text_guide) == ("full", 8, 1.0)
    assert next(s for s in at.slider if s.label == "Sampling steps").value == 8


def test_an_unfinished_scene_is_not_submitted_and_the_message_says_why(studio):
    at = page_app("render").run()
    button(at, "Render (draft)").click().run()
    assert [e.value for e in at.main.error] == [
        "Submitting the render: lines: the script is empty; write at least one line"]
    assert not any(h.value.startswith("Render ") for h in at.subheader)   # no job followed


def test_a_draft_render_from_submit_to_download(studio, watcher):
    scene = complete_scene()
    scene.lines = [Line(0, "Hello Bo, good to see you."), Line(1, "Hi Ann! Likewise.")]
    state.write_autosave(scene, studio / "autosave.duet")
    at = page_app("render").run()
    button(at, "Render (draft)").click().run()
    assert at.exception == [] and [e.value for e in at.main.error] == []
    [queued] = [s.value for s in at.main.success]
    job_id = queued.split()[1]
    final = wait_done(watcher, job_id)
    assert final.state == "done", final.error

    at.run()
    assert at.exception == [] and [e.value for e in at.main.error] == []
    assert f"Render {job_id} · done" in [h.value for h in at.subheader]
    assert len(at.get("video")) == 1
    assert [b.label for b in at.main.get("download_button")] == ["MP4", "SRT", "WAV"]
    assert f"{final.duration:.1f} s · draft · draft" in [c.value for c in at.caption]
    button(at, "Done with this render").click().run()
    assert at.get("video") == []


def test_a_running_render_shows_its_progress_and_can_be_cancelled(studio, watcher, projects):
    project = projects.long_audio(seconds=60.0)
    state.write_autosave(load_project(project), studio / "autosave.duet")
    at = page_app("render").run()
    button(at, "Render (draft)").click().run()
    job_id = [s.value for s in at.main.success][0].split()[1]
    wait_for_event(watcher, job_id, lambda e: isinstance(e, p.ProgressEvent)
                   and e.phase == "frames" and e.step > 0)

    at.run()
    assert f"Render {job_id} · running" in [h.value for h in at.subheader]
    [bar] = at.get("progress")
    assert bar.proto.text.startswith("frames · ")
    assert " so far" in bar.proto.text
    button(at, "Cancel").click().run()
    final = wait_done(watcher, job_id)
    assert final.state == "cancelled"
    at.run()
    assert "The render was cancelled." in [i.value for i in at.info]


def test_the_library_lists_reopens_and_deletes_renders(studio, watcher):
    scene = complete_scene()
    scene.title = "Sunrise chat"
    scene.cast[0].name = "Ann"
    job = watcher.submit(save_project(scene), "draft")
    assert wait_done(watcher, job.id).state == "done"

    at = page_app("library").run()
    assert at.exception == []
    row = f"**Sunrise chat** · `{job.id}` · :green[:material/check_circle: done]"
    assert row in [m.value for m in at.main.markdown]
    # newest first: this render's downloads come first
    assert [b.label for b in at.main.get("download_button")][:3] == ["MP4", "SRT", "WAV"]

    # "Open project" loads the render's scene and goes to the Cast page
    buttons = [b for b in at.button if b.key and job.id in b.key]
    next(b for b in buttons if b.label == "Open project").click().run()
    assert at.exception == [] and [e.value for e in at.main.error] == []
    assert load_project_draft(studio) == load_project(save_project(scene))

    at = page_app("library").run()
    next(b for b in at.button if b.key and job.id in b.key and b.label == "Delete").click().run()
    assert [s.value for s in at.main.success] == [f"Deleted {job.id}."]
    assert job.id not in {j.id for j in watcher.jobs()}
