"""Cast: who is in the video — a portrait (or a place in one group photo), the crop around the
face, where they stand on the canvas, their name, language and voice — and the reference image
exactly as the render will use it (shared.compose)."""
from __future__ import annotations

import io

import streamlit as st
from PIL import Image, ImageDraw, ImageFont

from shared import protocol as p
from shared.compose import canvas_size, compose
from shared.scene import (
    ASPECTS,
    MAX_CAST,
    MAX_IMAGE_BYTES,
    MIN_CAST,
    PLACEMENT_HEIGHT_RANGE,
    RESOLUTIONS,
    Crop,
    Placement,
    Scene,
    decode_image,
    default_placements,
)
from shared.voices import (
    DEFAULT_VOICES,
    FEMALE,
    LANG_NAMES,
    VoiceError,
    canonical_lang,
    closest_installed,
)
from studio import faces, state, widgets

MAX_IMAGE_MB = MAX_IMAGE_BYTES // (1024 * 1024)   # what the project format accepts
MAX_STORED_SIDE = 2048    # larger uploads are scaled down: the canvas is at most 1280 wide
THUMB_SIDE = 420
BOX_COLOURS = ("#ff4b4b", "#1c83e1", "#21c354", "#ffbd45", "#a64dff", "#ff8c00", "#00c0f2",
               "#f63366")
BACKGROUNDS = {"color": "Solid colour", "blur": "Blurred first portrait",
               "image": "Photo (e.g. one group photo of everyone)"}


def render() -> None:
    scene = state.scene()
    st.title("Cast")
    st.caption("Give each person a face and a voice, and place them on the canvas. The reference "
               "image on the right is exactly the first frame the render animates.")
    canvas, reference = st.columns([2, 3], gap="large")
    with canvas:
        _canvas_settings(scene)
    _people(scene)
    with reference:   # filled last, so it shows what was just changed below
        _reference(scene)


# ----------------------------------------------------------------------------- canvas


def _canvas_settings(scene: Scene) -> None:
    settings, background = scene.settings, scene.background
    with st.container(border=True):
        st.markdown("**Canvas**")
        size_col, aspect_col = st.columns(2)
        settings.resolution = size_col.selectbox(
            "Resolution", RESOLUTIONS, index=RESOLUTIONS.index(settings.resolution),
            key=state.key("canvas", "resolution"))
        aspects = list(ASPECTS)
        settings.aspect = aspect_col.selectbox(
            "Aspect", aspects, index=aspects.index(settings.aspect), key=state.key("canvas", "aspect"))
        width, height = canvas_size(settings)
        size_col.caption(f"{width} × {height} pixels")
        kinds = list(BACKGROUNDS)
        background.kind = st.radio(
            "Background", kinds, index=kinds.index(background.kind), format_func=BACKGROUNDS.get,
            key=state.key("canvas", "background"))
        background.color = st.color_picker(
            "Colour (also behind transparent portraits)", value=background.color,
            key=state.key("canvas", "color"))
        if background.kind == "image":
            _group_photo(scene)


def _group_photo(scene: Scene) -> None:
    upload = st.file_uploader(
        "Background photo — upload one photo holding everyone, then tick “stands in the photo” "
        "for each person", type=["png", "jpg", "jpeg", "webp"], key=state.key("canvas", "photo"),
        max_upload_size=MAX_IMAGE_MB)
    if upload is not None and state.first_sight("canvas.photo", upload.file_id):
        with widgets.reported(f"Reading {upload.name}"):
            scene.background.image = prepared_image(upload.getvalue())
            if all(person.image is None for person in scene.cast):
                _detect_group(scene)   # a fresh group photo: everyone stands in it
            state.structure_changed()
            st.rerun()
    if scene.background.image is None:
        st.info("No photo yet: upload one above.")
        return
    in_photo = [i for i, person in enumerate(scene.cast) if person.image is None]
    if in_photo and st.button(f"Find the {len(in_photo)} people in the photo",
                              key=state.key("canvas", "detect")):
        _detect_group(scene)
        state.structure_changed()
        st.rerun()
    note = state.note("group")
    if note:
        st.caption(note)


def _detect_group(scene: Scene) -> None:
    in_photo = [i for i, person in enumerate(scene.cast) if person.image is None]
    boxes, note = faces.propose_group_boxes(scene.background.image, len(in_photo))
    for i, box in zip(in_photo, boxes):
        scene.cast[i].crop = box
    state.set_note("group", note)


# ----------------------------------------------------------------------------- people


def _people(scene: Scene) -> None:
    head, add = st.columns([4, 1], vertical_alignment="bottom")
    head.subheader(f"People ({len(scene.cast)})")
    if add.button("Add person", icon=":material/person_add:", disabled=len(scene.cast) >= MAX_CAST,
                  key=state.key("cast", "add"), width="stretch"):
        add_person(scene)
        state.structure_changed()
        st.rerun()
    names = [f"{i + 1}. {person.name or 'unnamed'}" for i, person in enumerate(scene.cast)]
    catalog, catalog_known = widgets.voice_catalog()
    for i, tab in enumerate(st.tabs(names)):
        with tab:
            _person(scene, i, catalog, catalog_known)


def add_person(scene: Scene) -> None:
    """A new person with the next default voice; everyone is spaced out again."""
    person = state.new_person(len(scene.cast), default_placements(len(scene.cast) + 1)[-1])
    if len(scene.cast) % 2 == 1:
        person.voice = DEFAULT_VOICES["en-us"]["male"]
    if scene.background.kind == "image" and scene.background.image is not None:
        person.crop = Crop(0.4, 0.3, 0.2, 0.4)   # a box in the photo, to adjust
    scene.cast.append(person)
    for person, placement in zip(scene.cast, default_placements(len(scene.cast))):
        person.placement = placement


def remove_person(scene: Scene, index: int) -> str | None:
    """Remove a person who speaks no line; otherwise say what to do first."""
    spoken = sum(1 for line in scene.lines if line.speaker == index)
    if spoken:
        return (f"{scene.cast[index].name} speaks {spoken} line{'s' * (spoken > 1)}: give "
                "them to someone else or delete them on the Script page first.")
    del scene.cast[index]
    for line in scene.lines:
        if line.speaker > index:
            line.speaker -= 1
    return None


def _person(scene: Scene, i: int, catalog: list[p.VoiceEntry], catalog_known: bool) -> None:
    person = scene.cast[i]
    about, picture, place = st.columns(3, gap="medium")
    with about:
        person.name = st.text_input("Name", value=person.name, max_chars=60,
                                    key=state.key("cast", i, "name"))
        _language_and_voice(person, i, catalog, catalog_known)
        group = scene.background.kind == "image"
        if group:
            in_photo = st.toggle("Stands in the background photo", value=person.image is None,
                                 key=state.key("cast", i, "in_photo"))
            if in_photo and person.image is not None:
                person.image = None
                person.crop = Crop(0.4, 0.3, 0.2, 0.4)
                state.structure_changed()
                st.rerun()
        if person.image is not None or not group or not in_photo:
            _portrait_upload(person, i)
        if st.button("Remove this person", disabled=len(scene.cast) <= MIN_CAST,
                     key=state.key("cast", i, "remove"),
                     help=f"A scene has {MIN_CAST} to {MAX_CAST} people"):
            problem = remove_person(scene, i)
            if problem:
                st.warning(problem)
            else:
                state.structure_changed()
                st.rerun()
    with picture:
        if person.image is not None:
            _crop_editor(person.image, person.crop, i, "portrait")
        elif scene.background.kind == "image" and scene.background.image is not None:
            _crop_editor(scene.background.image, person.crop, i, "box in the photo")
        else:
            st.info("No portrait yet: upload one (a head-and-shoulders photo works best).")
    if person.image is not None:
        with place:
            _placement(person.placement, i)


def _language_and_voice(person, i: int, catalog: list[p.VoiceEntry], catalog_known: bool) -> None:
    languages = list(LANG_NAMES)
    try:
        current = canonical_lang(person.lang)
    except VoiceError:
        current = "en-us"
    lang = st.selectbox("Language", languages, index=languages.index(current),
                        format_func=LANG_NAMES.get, key=state.key("cast", i, "lang"))
    if lang != person.lang:
        person.lang = lang
    voices = [v for v in catalog if v.lang == lang]
    ids = [v.id for v in voices]
    if person.voice not in ids:
        gender = next((v.gender for v in catalog if v.id == person.voice), FEMALE)
        person.voice = DEFAULT_VOICES[lang][gender]
    installed = {v.id for v in catalog if v.installed}
    labels = {v.id: voice_label(v, installed, catalog_known) for v in voices}
    person.voice = st.selectbox("Voice", ids, index=ids.index(person.voice),
                                format_func=labels.get, key=state.key("cast", i, "voice"))
    if not catalog_known:
        st.caption("The daemon is offline, so which voices are installed is unknown.")
    elif person.voice not in installed:
        st.caption(f":material/warning: {labels[person.voice]}")


def voice_label(voice: p.VoiceEntry, installed: set[str], catalog_known: bool) -> str:
    """'af_heart — female, warm (grade A) ✓', or what an uninstalled voice falls back to."""
    label = f"{voice.id} — {voice.label}"
    if not catalog_known:
        return label
    if voice.installed:
        return f"{label} ✓"
    try:
        fallback, _ = closest_installed(voice.id, installed)
    except VoiceError:
        return f"{label} (not installed, no fallback)"
    return f"{label} (not installed → {fallback.id})"


def _portrait_upload(person, i: int) -> None:
    upload = st.file_uploader("Portrait", type=["png", "jpg", "jpeg", "webp"],
                              key=state.key("cast", i, "portrait"), max_upload_size=MAX_IMAGE_MB)
    if upload is None or not state.first_sight(f"cast.{i}.portrait", upload.file_id):
        return
    with widgets.reported(f"Reading {upload.name}"):
        person.image = prepared_image(upload.getvalue())
        proposal = faces.propose_portrait_crop(person.image)
        person.crop = proposal.crop
        state.set_note(f"face.{i}", proposal.note)
        state.structure_changed()
        st.rerun()


def prepared_image(data: bytes) -> bytes:
    """Validate an upload (shared.scene rules) and scale very large photos down, so projects
    stay small; the image keeps its format unless it has to be re-encoded."""
    image = decode_image(data)
    if max(image.size) <= MAX_STORED_SIDE:
        return data
    image.thumbnail((MAX_STORED_SIDE, MAX_STORED_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if image.mode == "RGBA":
        image.save(out, format="PNG", optimize=True)
    else:
        image.save(out, format="JPEG", quality=92)
    return out.getvalue()


def _crop_editor(image_bytes: bytes, crop: Crop, i: int, what: str) -> None:
    st.image(_thumbnail_with_box(image_bytes, crop), caption=f"{what} — the red box is used")
    note = state.note(f"face.{i}")
    if note and what == "portrait":
        st.caption(note)
    across = (crop.x, min(1.0, crop.x + crop.w))
    down = (crop.y, min(1.0, crop.y + crop.h))
    left, right = st.slider("Crop: left – right", 0.0, 1.0, across, step=0.005,
                            key=state.key("cast", i, "crop_x"))
    top, bottom = st.slider("Crop: top – bottom", 0.0, 1.0, down, step=0.005,
                            key=state.key("cast", i, "crop_y"))
    if right - left < 0.01 or bottom - top < 0.01:
        st.warning("The crop is too small: widen it.")
    else:   # written back only when moved, so a proposed crop keeps its exact values
        if (left, right) != across:
            crop.x, crop.w = left, right - left
        if (top, bottom) != down:
            crop.y, crop.h = top, bottom - top
    if what == "portrait" and st.button("Detect the face again", key=state.key("cast", i, "detect")):
        proposal = faces.propose_portrait_crop(image_bytes)
        crop.x, crop.y, crop.w, crop.h = (proposal.crop.x, proposal.crop.y, proposal.crop.w,
                                          proposal.crop.h)
        state.set_note(f"face.{i}", proposal.note)
        state.structure_changed()
        st.rerun()


def _thumbnail_with_box(image_bytes: bytes, crop: Crop) -> Image.Image:
    def thumbnail() -> Image.Image:
        image = decode_image(image_bytes).convert("RGB")
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        return image

    image = state.cached(f"thumb.{widgets.digest(image_bytes)}", None, thumbnail).copy()
    draw = ImageDraw.Draw(image)
    w, h = image.size
    draw.rectangle([crop.x * w, crop.y * h, (crop.x + crop.w) * w - 1, (crop.y + crop.h) * h - 1],
                   outline="#ff4b4b", width=3)
    return image


def _placement(placement: Placement, i: int) -> None:
    st.markdown("**Place on the canvas**")
    placement.cx = st.slider("Across", 0.0, 1.0, placement.cx, step=0.01,
                             key=state.key("cast", i, "cx"), help="Where the centre is, left to right")
    placement.cy = st.slider("Down", 0.0, 1.0, placement.cy, step=0.01,
                             key=state.key("cast", i, "cy"), help="Where the centre is, top to bottom")
    placement.height = st.slider("Height (of the canvas)", PLACEMENT_HEIGHT_RANGE[0], 1.5,
                                 min(1.5, placement.height), step=0.01,
                                 key=state.key("cast", i, "height"))


# ----------------------------------------------------------------------------- reference image


def _reference(scene: Scene) -> None:
    st.subheader("Reference image")
    missing = [person.name for person in scene.cast if person.image is None
               and (scene.background.kind != "image" or scene.background.image is None)]
    preview = preview_scene(scene)
    with widgets.reported("Composing the reference image"):
        image = state.cached("composite", state.scene_digest(preview),
                             lambda: boxed_composite(preview))
        st.image(image, width="stretch")
        width, height = canvas_size(scene.settings)
        st.caption(f"{width} × {height}: the first frame of the video. Each box is the region "
                   "whose lips follow that person's voice.")
    if missing:
        st.warning(f"No portrait yet for {', '.join(missing)} (a grey placeholder is shown).")


def preview_scene(scene: Scene) -> Scene:
    """The scene as it would render, with a grey placeholder for anyone who has no picture yet."""
    from dataclasses import replace
    group_photo = scene.background.kind == "image" and scene.background.image is not None
    cast = [person if person.image is not None or group_photo
            else replace(person, image=_placeholder(), crop=Crop(0.0, 0.0, 1.0, 1.0))
            for person in scene.cast]
    background = scene.background
    if background.kind == "image" and background.image is None:
        background = replace(background, kind="color")
    return replace(scene, cast=cast, background=background)


def _placeholder() -> bytes:
    def draw() -> bytes:
        image = Image.new("RGB", (300, 375), "#8a8f98")
        pen = ImageDraw.Draw(image)
        pen.ellipse([90, 60, 210, 190], fill="#c5c9d0")        # head
        pen.ellipse([35, 200, 265, 430], fill="#c5c9d0")       # shoulders
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()
    return state.cached("placeholder", None, draw)


def boxed_composite(scene: Scene) -> Image.Image:
    """compose(scene) with each person's box and name drawn on top."""
    composite = compose(scene)
    image = composite.image.copy()
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(14, image.height // 24))
    line = max(2, image.height // 160)
    for i, (box, person) in enumerate(zip(composite.boxes, scene.cast)):
        row_min, col_min, row_max, col_max = box
        colour = BOX_COLOURS[i % len(BOX_COLOURS)]
        pen.rectangle([col_min, row_min, col_max - 1, row_max - 1], outline=colour, width=line)
        corner = (col_min + line, row_min + line)
        left, top, right, bottom = pen.textbbox(corner, f"{i + 1}. {person.name}", font=font)
        pen.rectangle([left - 4, top - 3, right + 4, bottom + 3], fill=colour)
        pen.text(corner, f"{i + 1}. {person.name}", fill="white", font=font)
    return image
