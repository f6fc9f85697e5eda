"""Library: the daemon's past and current jobs — re-open a job's project, show it, download its
files, delete it."""
from __future__ import annotations

import time

import streamlit as st

from shared import protocol as p
from shared.scene import load_project
from studio import state, widgets
from studio.views import page
from studio.views.render import download_buttons
from studio.widgets import fetch_bytes

BADGES = {"queued": ":material/schedule: queued", "running": ":material/hourglass_top: running",
          "done": ":green[:material/check_circle: done]", "failed": ":red[:material/error: failed]",
          "cancelled": ":material/cancel: cancelled"}
LISTED = 100


def render() -> None:
    st.title("Library")
    jobs = None
    with widgets.reported("Listing the renders"):
        jobs = state.client().jobs(limit=LISTED)
    if jobs is None:
        return
    if not jobs:
        st.info("No renders yet. Make one on the Render page.")
        return
    st.caption(f"{len(jobs)} render{'s' * (len(jobs) != 1)}, newest first.")
    for job in jobs:
        _job_row(job)


def _job_row(job: p.JobInfo) -> None:
    with st.container(border=True):
        about, actions = st.columns([3, 2], vertical_alignment="center")
        title = job.title or "Untitled"
        about.markdown(f"**{title}** · `{job.id}` · {BADGES.get(job.state, job.state)}")
        details = [job.mode, job.backend or "?", _when(job.created)]
        if job.duration is not None:
            details.append(f"{job.duration:.1f} s")
        if job.state == "queued" and job.queue_position:
            details.append(f"position {job.queue_position} in the queue")
        about.caption(" · ".join(details))
        if job.error:
            about.error(job.error)
        has = {a.name for a in job.artifacts}
        open_project, show, delete = actions.columns(3)
        if open_project.button("Open project", key=state.key("library", job.id, "open"),
                               disabled="project.zip" not in has,
                               help="Load this render's scene into the studio to edit it"):
            with widgets.reported(f"Opening the project of {job.id}"):
                reopen(job.id)
                st.switch_page(page("cast"))
        if show.button("Show", key=state.key("library", job.id, "show"),
                       help="Follow this render on the Render page"):
            state.follow_job(job.id)
            st.switch_page(page("render"))
        finished = job.state in p.TERMINAL_STATES
        if delete.button("Delete", key=state.key("library", job.id, "delete"),
                         disabled=not finished and job.state != "queued",
                         help="Remove the render and its files from the daemon"
                         if finished or job.state == "queued" else "Cancel it first"):
            with widgets.reported(f"Deleting {job.id}"):
                state.client().delete(job.id)
                if state.current_job() == job.id:
                    state.follow_job(None)
                state.flash("success", f"Deleted {job.id}.")
                st.rerun()
        if job.state == "done":
            download_buttons(job)


def reopen(job_id: str) -> None:
    """Replace the studio's scene with the project a job rendered."""
    scene = load_project(fetch_bytes(state.client(), job_id, "project.zip"))
    state.replace_scene(scene)
    state.flash("success", f"Opened the project of render {job_id}.")


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else "?"
