"""Duet Studio: `streamlit run studio/app.py` (./run_studio.sh does it, and starts a daemon).

Every run: the sidebar (daemon status, project save/open), the chosen page, then the autosave.
An unexpected error in a page is logged and shown as a message, never as a traceback.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

# `streamlit run studio/app.py` puts studio/ on the path, not the repository that holds the
# `studio` and `shared` packages.
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import streamlit as st  # noqa: E402

from studio import state, widgets  # noqa: E402
from studio.views import all_pages  # noqa: E402

log = logging.getLogger("studio")


def main() -> None:
    st.set_page_config(page_title="Duet Studio", page_icon=":material/record_voice_over:",
                       layout="wide")
    page = st.navigation(all_pages())
    run_page(page.run, page.title)


def run_page(render: Callable[[], None], title: str) -> None:
    """One run of a page with what surrounds every page: the session's scene (a new session
    starts from the autosave), messages from the last run, the autosave, the sidebar."""
    state.scene()
    widgets.daemon_banner()
    widgets.show_flashes()
    try:
        try:
            render()
        except Exception as e:  # a bug: say so plainly, keep the traceback for the log
            log.exception("the %s page failed", title)
            st.error(f"Something went wrong on this page ({type(e).__name__}: {e}). Your work "
                     "is kept; reload the page, and report this with the studio's log if it "
                     "repeats.")
        # After the page, so that the project it saves includes what was just typed there.
        widgets.sidebar()
    finally:
        problem = state.autosave()   # also when a page or the sidebar asked for a rerun
        if problem:
            st.warning(problem)


if __name__ == "__main__":   # streamlit runs this file as __main__; tests import run_page
    main()
