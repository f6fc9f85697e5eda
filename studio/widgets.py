"""Pieces every page shares: the error guard, the daemon status (sidebar), project save/load.

Errors: `reported(action)` is the one place that turns the client's, the scene's and the
script's domain errors into a message that says what to do — never a traceback.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import streamlit as st

from shared import protocol as p
from shared.scene import ProjectError, Scene, load_project, save_project
from shared.script import ScriptError
from shared.voices import KNOWN_VOICES, VoiceError
from studio import state
from studio.client import (DaemonClient, DaemonError, DaemonUnreachable, DownloadError,
                           RequestFailed)

# The sidebar asks the daemon at most this often; an unreachable daemon is asked less often,
# so that pages stay fast while it is down (each probe may wait PROBE_TIMEOUT_S).
STATUS_MAX_AGE_S = 5.0
UNREACHABLE_MAX_AGE_S = 30.0
PROBE_TIMEOUT_S = 1.0
START_DAEMON = "./run_daemon.sh"   # or: python -m daemon
DOWNLOAD_TIMEOUT_S = 30.0          # one chunk of an artifact
SLOW_TIMEOUT_S = 60.0              # a line spoken, a dialogue mixed, a project checked


@dataclass(frozen=True)
class DaemonStatus:
    info: p.InfoReply | None
    error: str | None      # why there is no info

    @property
    def connected(self) -> bool:
        return self.info is not None

    def backend(self, name: str) -> p.BackendState | None:
        if self.info is None:
            return None
        return next((b for b in self.info.backends if b.name == name), None)


def explain(error: Exception) -> str:
    """What went wrong, in words that say what to do."""
    if isinstance(error, DaemonUnreachable):
        return (f"The daemon is not answering at {state.config().daemon_address}. Start it with "
                f"`{START_DAEMON}` (or `python -m daemon`), then try again; editing works "
                "meanwhile.")
    if isinstance(error, RequestFailed):
        return error.message
    return str(error)


@contextmanager
def reported(action: str) -> Iterator[None]:
    """Run a user action; a domain error becomes an st.error naming the action and the fix."""
    try:
        yield
    except (DaemonError, ProjectError, ScriptError, VoiceError) as e:
        if isinstance(e, DaemonUnreachable):
            state.forget("daemon_status")   # the sidebar should say so at once
        st.error(f"{action}: {explain(e)}", icon=":material/error:")


def daemon_status(refresh: bool = False) -> DaemonStatus:
    """The daemon's info, asked at most every STATUS_MAX_AGE_S (UNREACHABLE_MAX_AGE_S while
    it does not answer)."""
    if refresh:
        state.forget("daemon_status")

    def probe() -> DaemonStatus:
        try:
            return DaemonStatus(state.client().request(p.InfoRequest(), timeout=PROBE_TIMEOUT_S),
                                None)
        except DaemonError as e:
            return DaemonStatus(None, explain(e))

    return state.cached("daemon_status", None, probe, max_age_s=lambda status: (
        STATUS_MAX_AGE_S if status.connected else UNREACHABLE_MAX_AGE_S))


def require_daemon() -> None:
    """Raise DaemonUnreachable at once (not after a long request's timeout) when the daemon
    does not answer a quick info request now."""
    status = daemon_status(refresh=True)
    if not status.connected:
        raise DaemonUnreachable(status.error or "the daemon does not answer")


def voice_catalog() -> tuple[list[p.VoiceEntry], bool]:
    """The daemon's voices (with what is installed), or the built-in catalog when the daemon
    is down (then installed is unknown: the second value is False)."""
    def ask() -> list[p.VoiceEntry] | None:
        try:
            return state.client().voices()
        except DaemonError:
            return None

    status = daemon_status()
    # Asked again now and then: a daemon restarted with new voice weights has more installed.
    voices = state.cached("voices", status.connected, ask, max_age_s=60.0) \
        if status.connected else None
    if voices:
        return voices, True
    return [p.VoiceEntry(id=v.id, backend=v.backend, lang=v.lang, gender=v.gender, label=v.label,
                         installed=False) for v in KNOWN_VOICES.values()], False


# ----------------------------------------------------------------------------- the sidebar


def sidebar() -> None:
    with st.sidebar:
        _daemon_panel()
        st.divider()
        _project_panel()


def _daemon_panel() -> None:
    status = daemon_status()
    st.subheader("Daemon")
    if not status.connected:
        st.error(f"Not connected · {state.config().daemon_address}", icon=":material/power_off:")
        if st.button("Check again", key=state.key("sidebar", "retry")):
            daemon_status(refresh=True)
            st.rerun()
        return
    info = status.info
    ready = [b for b in info.backends if b.state == "ready"]
    gpus = [d for d in info.devices if not d.name.startswith("cpu")]
    queue = info.queue
    st.success(f"Connected · {state.config().daemon_address}", icon=":material/check_circle:")
    st.markdown(
        f"**Backends:** {', '.join(b.name for b in ready) or 'none ready'}  \n"
        f"**GPUs:** {_gpu_summary(gpus) if gpus else 'none (CPU)'}  \n"
        f"**Queue:** {queue.queued} waiting"
        f"{f', rendering {queue.running}' if queue.running else ''}  \n"
        f"**Voices:** {info.voices.installed} of {info.voices.total} installed "
        f"({', '.join(info.voices.backends) or 'none'})")


def _gpu_summary(gpus: list[p.DeviceInfo]) -> str:
    names = sorted({d.name for d in gpus})
    return f"{len(gpus)} × {', '.join(names)}"


def _project_panel() -> None:
    scene = state.scene()
    st.subheader("Project")
    scene.title = st.text_input("Title", value=scene.title, max_chars=200,
                                key=state.key("project", "title"), placeholder="Untitled")
    saved = state.cached("project_file", state.scene_digest(scene), lambda: _project_bytes(scene))
    if isinstance(saved, bytes):
        st.download_button("Save project (.duet)", icon=":material/save:", data=saved, file_name=_file_name(scene),
                           mime="application/zip", key=state.key("project", "save"),
                           on_click="ignore", width="stretch")
    else:
        st.button("Save project (.duet)", icon=":material/save:", disabled=True, key=state.key("project", "save"),
                  width="stretch")
        st.caption(f"Not a complete project yet — {saved}. Your work is autosaved meanwhile.")
    upload = st.file_uploader("Open a project", type=["duet", "zip"],
                              key=state.key("project", "open"))
    if upload is not None and state.first_sight("project.open", upload.file_id):
        with reported(f"Opening {upload.name}"):
            state.replace_scene(load_project(upload.getvalue()))
            state.flash("success", f"Opened {upload.name}.")
            st.rerun()
    with st.popover("New project", width="stretch"):
        st.write("Start over with an empty scene? Save this one first if you want to keep it.")
        if st.button("Start a new project", key=state.key("project", "new"), type="primary"):
            state.replace_scene(state.new_scene())
            state.flash("success", "Started a new project.")
            st.rerun()


def _project_bytes(scene: Scene) -> bytes | str:
    try:
        return save_project(scene)
    except ProjectError as e:
        return str(e)


def _file_name(scene: Scene) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in scene.title.strip())[:60]
    return f"{stem.strip('-') or 'duet-project'}.duet"


def notes(warnings: list[str]) -> None:
    """The daemon's warnings (voice fallbacks and the like), folded away: useful, not urgent."""
    if warnings:
        with st.expander(f"{len(warnings)} note{'s' * (len(warnings) > 1)} from the daemon",
                         icon=":material/info:"):
            for warning in warnings:
                st.caption(warning)


def daemon_banner() -> None:
    """At the top of every page while the daemon does not answer: how to start it."""
    status = daemon_status()
    if not status.connected:
        st.warning(status.error, icon=":material/power_off:")


def show_flashes() -> None:
    for kind, message in state.take_flashes():
        getattr(st, kind)(message)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- artifacts


def fetch_bytes(client: DaemonClient, job_id: str, artifact: str) -> bytes:
    """A job's artifact in memory, chunk by chunk, checked against the size and sha256 the
    daemon announced."""
    chunks, offset = [], 0
    while True:
        chunk = client.request(p.FetchRequest(job_id=job_id, artifact=artifact, offset=offset,
                                              length=p.MAX_CHUNK_BYTES), timeout=DOWNLOAD_TIMEOUT_S)
        chunks.append(chunk.data)
        offset += len(chunk.data)
        if chunk.eof or not chunk.data:
            break
    data = b"".join(chunks)
    if len(data) != chunk.size or digest(data) != chunk.sha256:
        raise DownloadError(f"{artifact} of job {job_id} arrived damaged ({len(data)} of "
                            f"{chunk.size} bytes); try again")
    return data


def deferred_fetch(job_id: str, artifact: str) -> Callable[[], bytes]:
    """For st.download_button: fetches when clicked. Streamlit runs it on another thread, so
    it uses a client of its own (a ZMQ socket must stay on one thread)."""
    address = state.config().daemon_address

    def fetch() -> bytes:
        with DaemonClient(address, timeout=DOWNLOAD_TIMEOUT_S) as own:
            return fetch_bytes(own, job_id, artifact)

    return fetch
