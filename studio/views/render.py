"""Render: describe the scene, choose settings (or a preset), submit, follow the job live
(phase, step, clip, ETA, preview frames), cancel, and get the result: the video, its subtitles
and its soundtrack."""
from __future__ import annotations

import dataclasses
import random

import streamlit as st

from shared import protocol as p
from shared.scene import (
    ASPECTS,
    FRAME_NUM_RANGE,
    GUIDE_RANGE,
    MAX_PROMPT_CHARS,
    RESOLUTIONS,
    SEED_RANGE,
    SHIFT_RANGE,
    STEPS_RANGE,
    SUBTITLES,
    TEACACHE_THRESHOLD_RANGE,
    Scene,
    Settings,
    check_scene,
    save_project,
)
from studio import state, widgets
from studio.client import DaemonError
from studio.widgets import deferred_fetch, fetch_bytes

LIVE_REFRESH_S = 1.0

# Presets set these fields; anything else the person chose stays. The 8-step values are the
# official MultiTalk recipe for the FusioniX LoRA (text guide 1 turns the no-text pass off).
PRESETS: dict[str, dict[str, object]] = {
    "Draft preview": {"mode": "draft"},
    "Quality (40 steps)": {"mode": "full", "steps": 40, "text_guide": 5.0, "audio_guide": 4.0,
                           "shift": None, "teacache": False},
    "Fast (8-step LoRA)": {"mode": "full", "steps": 8, "text_guide": 1.0, "audio_guide": 2.0,
                           "shift": 2.0, "teacache": False},
}
CUSTOM = "Custom"
MODES = {"draft": "Draft — CPU animatic (fast, no model)", "full": "Full — MultiTalk on GPUs"}
SUBTITLE_MODES = {"sidecar": "Separate .srt file", "burn": "Burned into the video",
                  "none": "None"}


def render() -> None:
    scene = state.scene()
    st.title("Render")
    status = widgets.daemon_status()
    _description(scene)
    _settings(scene, status)
    _submit(scene, status)
    job_id = state.current_job()
    if job_id:
        st.divider()
        _job(job_id)


def _description(scene: Scene) -> None:
    scene.prompt = st.text_area(
        "Scene description (prompt)", value=scene.prompt, max_chars=MAX_PROMPT_CHARS, height=100,
        key=state.key("render", "prompt"),
        help="What the video shows: the people, the mood, the setting, the camera.")
    with st.expander("Negative prompt (what to avoid)"):
        scene.negative_prompt = st.text_area(
            "Negative prompt", value=scene.negative_prompt, max_chars=MAX_PROMPT_CHARS,
            height=100, key=state.key("render", "negative"), label_visibility="collapsed")


# ----------------------------------------------------------------------------- settings


def preset_of(settings: Settings) -> str:
    for name, values in PRESETS.items():
        if all(getattr(settings, field) == value for field, value in values.items()):
            return name
    return CUSTOM


def apply_preset(settings: Settings, name: str) -> Settings:
    return dataclasses.replace(settings, **PRESETS[name])


def full_mode_problem(status: widgets.DaemonStatus) -> str | None:
    """Why full renders cannot be submitted now, or None."""
    if not status.connected:
        return "the daemon is offline"
    backend = status.backend("multitalk")
    if backend is None:
        return "this daemon has no MultiTalk backend"
    if backend.state != "ready":
        return backend.detail or f"the MultiTalk backend is {backend.state}"
    return None


def _settings(scene: Scene, status: widgets.DaemonStatus) -> None:
    settings = scene.settings
    problem = full_mode_problem(status)
    with st.container(border=True):
        st.markdown("**Settings**")
        names = [*PRESETS, CUSTOM]
        current = preset_of(settings)
        chosen = st.radio("Preset", names, index=names.index(current), horizontal=True,
                          key=state.key("render", "preset"))
        if chosen != current and chosen != CUSTOM:
            scene.settings = apply_preset(settings, chosen)
            state.structure_changed()
            st.rerun()
        if current == "Fast (8-step LoRA)":
            st.caption(":material/info: 8 steps look right only with the FusioniX LoRA merged "
                       "into the daemon's model (`weights/download.sh lora`; see "
                       "weights/README.md).")
        modes = list(MODES)
        if problem and settings.mode == "full":
            st.warning(f"Full renders are not available: {problem}. Draft renders work now.")
        settings.mode = st.radio("Mode", modes, index=modes.index(settings.mode),
                                 format_func=MODES.get, horizontal=True,
                                 key=state.key("render", "mode"))
        if problem:
            st.caption(f":material/info: Full mode needs the MultiTalk backend: {problem}.")
        size, aspect, subtitles = st.columns(3)
        settings.resolution = size.selectbox(
            "Resolution", RESOLUTIONS, index=RESOLUTIONS.index(settings.resolution),
            key=state.key("render", "resolution"))
        aspects = list(ASPECTS)
        settings.aspect = aspect.selectbox("Aspect", aspects, index=aspects.index(settings.aspect),
                                           key=state.key("render", "aspect"))
        modes_sub = list(SUBTITLES)
        settings.subtitles = subtitles.selectbox(
            "Subtitles", modes_sub, index=modes_sub.index(settings.subtitles),
            format_func=SUBTITLE_MODES.get, key=state.key("render", "subtitles"))
        with st.expander("Model settings (full mode)", expanded=settings.mode == "full"):
            _model_settings(settings)


def _model_settings(settings: Settings) -> None:
    steps, text_guide, audio_guide = st.columns(3)
    settings.steps = steps.slider("Sampling steps", *STEPS_RANGE, settings.steps,
                                  key=state.key("render", "steps"))
    settings.text_guide = text_guide.slider("Text guidance", *GUIDE_RANGE, settings.text_guide,
                                            step=0.5, key=state.key("render", "text_guide"))
    settings.audio_guide = audio_guide.slider("Audio guidance", *GUIDE_RANGE,
                                              settings.audio_guide, step=0.5,
                                              key=state.key("render", "audio_guide"))
    shift, seed, frames = st.columns(3)
    automatic = shift.checkbox("Automatic shift (7 at 480p, 11 at 720p)",
                               value=settings.shift is None, key=state.key("render", "auto_shift"))
    if automatic:
        settings.shift = None
    else:
        settings.shift = shift.slider("Shift", *SHIFT_RANGE, settings.effective_shift(), step=0.5,
                                      key=state.key("render", "shift"))
    settings.seed = int(seed.number_input("Seed", *SEED_RANGE, settings.seed, step=1,
                                          key=state.key("render", "seed")))
    if seed.button("New seed", icon=":material/casino:", key=state.key("render", "new_seed")):
        settings.seed = random.randint(*SEED_RANGE)
        state.structure_changed()
        st.rerun()
    settings.frame_num = frames.slider(
        "Frames per clip", *FRAME_NUM_RANGE, settings.frame_num, step=4,
        key=state.key("render", "frame_num"), help="4n+1 frames at 25 fps; 81 is the trained length")
    colour, teacache, apg = st.columns(3)
    settings.color_correction = colour.checkbox(
        "Colour correction", value=settings.color_correction, key=state.key("render", "colour"),
        help="Match each clip's colours to the reference image (long videos drift otherwise)")
    settings.teacache = teacache.checkbox("TeaCache (faster, a little softer)",
                                          value=settings.teacache,
                                          key=state.key("render", "teacache"))
    if settings.teacache:
        settings.teacache_threshold = teacache.slider(
            "TeaCache threshold", *TEACACHE_THRESHOLD_RANGE, settings.teacache_threshold,
            step=0.05, key=state.key("render", "teacache_threshold"))
    settings.apg = apg.checkbox("APG (steadier colours at high guidance)", value=settings.apg,
                                key=state.key("render", "apg"))


# ----------------------------------------------------------------------------- submit


def _submit(scene: Scene, status: widgets.DaemonStatus) -> None:
    problem = full_mode_problem(status) if scene.settings.mode == "full" else None
    busy = state.current_job() is not None and _is_running(state.current_job())
    label = f"Render ({scene.settings.mode})"
    if st.button(label, type="primary", icon=":material/movie:", disabled=bool(problem) or not status.connected,
                 key=state.key("render", "submit")):
        with widgets.reported("Submitting the render"):
            check_scene(scene)
            widgets.require_daemon()
            job = state.client().submit(save_project(scene), scene.settings.mode,
                                        timeout=widgets.SLOW_TIMEOUT_S)
            state.follow_job(job.id)
            state.flash("success", f"Render {job.id} queued.")
            st.rerun()
    if not status.connected:
        st.caption("Start the daemon to render; everything you edit is kept meanwhile.")
    elif busy:
        st.caption("Another render of this session is running; a new one queues behind it.")


def _is_running(job_id: str) -> bool:
    job = state.recall("job_state", job_id)
    return job is not None and job.state not in p.TERMINAL_STATES


# ----------------------------------------------------------------------------- the job


def _job(job_id: str) -> None:
    job = None
    with widgets.reported(f"Render {job_id}"):
        job = state.client().status(job_id)
        state.remember("job_state", job_id, job)
    if job is None:   # the daemon is down or forgot the job: the message above says which
        if st.button("Stop following this render", key=state.key("render", "forget")):
            state.follow_job(None)
            st.rerun()
    elif job.state in p.TERMINAL_STATES:
        _result(job)
    else:
        _live(job_id)


@st.fragment(run_every=LIVE_REFRESH_S)
def _live(job_id: str) -> None:
    """Re-run every second on its own (the rest of the page does not wait): the job's state."""
    try:
        job = state.client().status(job_id)
    except DaemonError:
        st.rerun()   # the whole page says what is wrong, and stops refreshing every second
    state.remember("job_state", job_id, job)
    if job.state in p.TERMINAL_STATES:
        st.rerun()   # the whole page, which shows the result
    show_progress(job)
    if st.button("Cancel", icon=":material/stop_circle:",
                 key=state.key("render", "cancel", job_id)):
        with widgets.reported(f"Cancelling {job_id}"):
            state.client().cancel(job_id)
            st.rerun(scope="fragment")


def show_progress(job: p.JobInfo) -> None:
    st.subheader(f"Render {job.id} · {job.state}")
    if job.state == "queued":
        ahead = (job.queue_position or 1) - 1
        st.info(f"Waiting in the queue ({ahead} job{'s' * (ahead != 1)} ahead).")
        return
    progress = job.progress
    if progress is None:
        st.progress(0.0, text="Starting…")
        return
    fraction = progress.step / progress.total if progress.total else 0.0
    parts = [progress.phase]
    if progress.clips:
        parts.append(f"clip {progress.clip} of {progress.clips}")
    if progress.total:
        parts.append(f"step {progress.step} of {progress.total}")
    if progress.eta_s is not None:
        parts.append(f"about {_duration(progress.eta_s)} left")
    parts.append(f"{_duration(progress.elapsed_s)} so far")
    st.progress(min(1.0, fraction), text=" · ".join(parts))
    if progress.message:
        st.caption(progress.message)
    if progress.preview:
        st.image(progress.preview, caption="Latest frame", width=360)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _result(job: p.JobInfo) -> None:
    st.subheader(f"Render {job.id} · {job.state}")
    if job.state == "failed":
        st.error(f"The render failed: {job.error or 'no reason given'}")
    elif job.state == "cancelled":
        st.info("The render was cancelled.")
    widgets.notes(job.warnings)
    if job.state == "done":
        available = {a.name: a for a in job.artifacts}
        if "video.mp4" in available:
            video = state.cached(f"artifact.{job.id}.video.mp4", available["video.mp4"].sha256,
                                 lambda: fetch_bytes(state.client(), job.id, "video.mp4"))
            subtitles = None   # a draft shows each line in the picture already
            if "subtitles.vtt" in available and job.mode != "draft":
                subtitles = state.cached(
                    f"artifact.{job.id}.subtitles.vtt", available["subtitles.vtt"].sha256,
                    lambda: fetch_bytes(state.client(), job.id, "subtitles.vtt"))
            st.video(video, subtitles=subtitles)
            if job.duration is not None:
                st.caption(f"{job.duration:.1f} s · {job.mode} · {job.backend}")
            download_buttons(job, video)
    if st.button("Done with this render", key=state.key("render", "clear")):
        state.follow_job(None)
        st.rerun()


def download_buttons(job: p.JobInfo, video: bytes | None = None) -> None:
    """MP4, SRT and WAV downloads; bytes not already here are fetched when clicked, on a
    client of their own (the button runs them off the session's thread)."""
    available = {a.name for a in job.artifacts}
    stem = f"duet-{job.id}"
    files = [("video.mp4", "MP4", f"{stem}.mp4", "video/mp4"),
             ("subtitles.srt", "SRT", f"{stem}.srt", "application/x-subrip"),
             ("dialogue.wav", "WAV", f"{stem}.wav", "audio/wav")]
    row = st.container(horizontal=True)
    for artifact, label, name, mime in files:
        column = row
        if artifact not in available:
            column.button(label, disabled=True, icon=":material/download:", key=state.key("download", job.id, artifact),
                          help=f"this render has no {artifact}")
            continue
        data = video if artifact == "video.mp4" and video is not None else \
            deferred_fetch(job.id, artifact)
        column.download_button(label, data=data, icon=":material/download:", file_name=name, mime=mime, on_click="ignore",
                               key=state.key("download", job.id, artifact))
