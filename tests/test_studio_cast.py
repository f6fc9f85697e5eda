"""The Cast page as a person uses it (AppTest): portraits and the proposed crop, people added and
removed, language and voice, a group photo, and the reference image — compose(scene) itself, with
the boxes drawn. A real daemon (draft backend, espeak-ng voices) supplies the voice catalog."""
from __future__ import annotations

import numpy as np
import pytest

from shared.compose import compose
from shared.scene import Crop, Line, default_placements
from studio import faces, state
from studio.views.cast import BOX_COLOURS, boxed_composite, preview_scene
from test_studio_faces import draw_group_photo, draw_portrait, needs_cascade
from test_studio_state import complete_scene, load_project_draft, page_app, studio, studio_env  # noqa: F401


def sliders(at, label: str) -> list:
    return [s for s in at.slider if s.label == label]


def upload_portrait(at, person: int, png: bytes, name: str = "face.png"):
    uploader = [u for u in at.main.file_uploader if u.label == "Portrait"][person]
    return uploader.set_value((name, png, "image/png")).run()


@needs_cascade
def test_an_uploaded_portrait_gets_a_head_and_shoulders_crop(studio):
    at = page_app("cast").run()
    portrait = draw_portrait()
    upload_portrait(at, 0, portrait)
    assert at.exception == []
    proposal = faces.propose_portrait_crop(portrait)
    crop = load_project_draft(studio).cast[0].crop
    assert crop == proposal.crop and proposal.face is not None
    assert sliders(at, "Crop: left – right")[0].value == pytest.approx((crop.x, crop.x + crop.w))
    assert sliders(at, "Crop: top – bottom")[0].value == pytest.approx((crop.y, crop.y + crop.h))
    assert "Face found: head and shoulders." in [c.value for c in at.caption]
    assert load_project_draft(studio).cast[0].image == portrait


def test_the_crop_and_the_place_on_the_canvas_follow_the_sliders(studio):
    state.write_autosave(complete_scene(), studio / "autosave.duet")
    at = page_app("cast").run()
    sliders(at, "Crop: left – right")[1].set_value((0.2, 0.7))
    sliders(at, "Crop: top – bottom")[1].set_value((0.1, 0.6))
    sliders(at, "Across")[1].set_value(0.6)
    sliders(at, "Height (of the canvas)")[1].set_value(0.5)
    at.run()
    person = load_project_draft(studio).cast[1]
    assert (person.crop.x, person.crop.y) == (0.2, 0.1)
    assert (person.crop.w, person.crop.h) == pytest.approx((0.5, 0.5))
    assert (person.placement.cx, person.placement.height) == (0.6, 0.5)


def test_people_can_be_added_up_to_eight_and_removed_down_to_two(studio):
    at = page_app("cast").run()
    add = next(b for b in at.button if b.label == "Add person")
    add.click().run()
    scene = load_project_draft(studio)
    assert [p.name for p in scene.cast] == ["Person 1", "Person 2", "Person 3"]
    assert [p.placement for p in scene.cast] == default_placements(3)   # spaced out again
    for _ in range(5):
        next(b for b in at.button if b.label == "Add person").click().run()
    assert len(load_project_draft(studio).cast) == 8
    assert next(b for b in at.button if b.label == "Add person").disabled

    removes = [b for b in at.button if b.label == "Remove this person"]
    removes[2].click().run()   # "Person 3"
    assert [p.name for p in load_project_draft(studio).cast][:3] == ["Person 1", "Person 2",
                                                                     "Person 4"]


def test_two_people_cannot_become_one(studio):
    at = page_app("cast").run()
    assert [b.disabled for b in at.button if b.label == "Remove this person"] == [True, True]


def test_someone_who_speaks_lines_is_not_removed_silently(studio):
    scene = complete_scene()
    scene.cast.append(state.new_person(2, default_placements(3)[2]))
    scene.lines.append(Line(2, "I have a line too."))
    state.write_autosave(scene, studio / "autosave.duet")
    at = page_app("cast").run()
    [b for b in at.button if b.label == "Remove this person"][2].click().run()
    assert [w.value for w in at.warning if "speaks" in w.value] == [
        "Person 3 speaks 1 line: give them to someone else or delete them on the Script page "
        "first."]
    assert len(load_project_draft(studio).cast) == 3


def test_a_new_language_brings_that_languages_voice(studio):
    at = page_app("cast").run()
    [language, _] = [s for s in at.selectbox if s.label == "Language"]
    language.set_value("zh").run()
    person = load_project_draft(studio).cast[0]
    assert (person.lang, person.voice) == ("zh", "zf_xiaoxiao")
    voice = [s for s in at.selectbox if s.label == "Voice"][0]
    assert voice.value == "zf_xiaoxiao"
    assert [label.split(" — ")[0] for label in voice.options] == [
        "zf_xiaobei", "zf_xiaoni", "zf_xiaoxiao", "zf_xiaoyi", "zm_yunjian", "zm_yunxi",
        "zm_yunxia", "zm_yunyang", "espeak:cmn", "espeak:cmn+f3"]


def test_voices_say_whether_they_are_installed_and_what_stands_in(studio):
    # the daemon here has espeak-ng only: a Kokoro voice falls back to an espeak voice
    at = page_app("cast").run()
    voice = [s for s in at.selectbox if s.label == "Voice"][0]
    assert "af_heart — female, warm (grade A) (not installed → espeak:en-us+f3)" in voice.options
    assert "espeak:en-us+f3 — female, American English, robotic (espeak-ng) ✓" in voice.options
    assert ":material/warning: af_heart — female, warm (grade A) (not installed → "\
        "espeak:en-us+f3)" in [c.value for c in at.caption]


@needs_cascade
def test_a_group_photo_puts_everyone_in_it_with_a_box_each(studio):
    at = page_app("cast").run()
    [background] = [r for r in at.radio if r.label == "Background"]
    background.set_value("image").run()
    photo = draw_group_photo()
    uploader = next(u for u in at.main.file_uploader if u.label.startswith("Background photo"))
    uploader.set_value(("group.png", photo, "image/png")).run()
    assert at.exception == []
    scene = load_project_draft(studio)
    boxes, note = faces.propose_group_boxes(photo, 2)
    assert [p.image for p in scene.cast] == [None, None]
    assert [p.crop for p in scene.cast] == boxes
    assert scene.background.image == photo
    assert note in [c.value for c in at.caption]
    assert [t.value for t in at.toggle if t.label == "Stands in the background photo"] == \
        [True, True]
    assert not any("No portrait yet" in w.value for w in at.warning)


def test_the_reference_image_is_the_composite_the_render_uses_with_boxes_drawn():
    scene = complete_scene()
    composite = compose(scene)
    shown = np.asarray(boxed_composite(scene))
    plain = np.asarray(composite.image)
    assert shown.shape == plain.shape
    row_min, col_min, row_max, col_max = composite.boxes[1]
    # the box's outline is drawn in the person's colour; inside it the picture is untouched
    colour = tuple(int(BOX_COLOURS[1][i:i + 2], 16) for i in (1, 3, 5))
    assert tuple(shown[row_max - 1, (col_min + col_max) // 2]) == colour
    inner = (slice(row_min + 40, row_max - 10), slice(col_min + 10, col_max - 10))
    assert np.array_equal(shown[inner], plain[inner])


def test_someone_without_a_portrait_is_shown_as_a_placeholder():
    scene = state.new_scene()
    scene.cast[0].image = draw_portrait()
    scene.cast[0].crop = Crop(0.1, 0.1, 0.8, 0.8)
    preview = preview_scene(scene)
    assert preview.cast[0] is scene.cast[0]
    assert preview.cast[1].image is not None and scene.cast[1].image is None
    assert len(compose(preview).boxes) == 2
