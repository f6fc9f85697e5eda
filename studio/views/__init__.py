"""The studio's pages, in navigation order. Each page module has a `render()` function; Streamlit
runs it as the page (st.Page with a callable), so importing a page module runs nothing.

Not named `pages/`: Streamlit treats a `pages/` folder beside the entry script as an old-style
multipage app, and the first run of a server process (e.g. a browser reload on /script after a
studio restart) then runs studio/pages/script.py itself instead of studio/app.py — an empty page.
"""
from __future__ import annotations

import importlib

import streamlit as st

TITLES = {"cast": ("Cast", ":material/groups:"), "script": ("Script", ":material/description:"), "render": ("Render", ":material/movie:"),
          "library": ("Library", ":material/video_library:")}


def page(name: str) -> st.Page:
    """The st.Page of one page (the same object identity each time is not needed: Streamlit
    matches pages by their function and url path)."""
    title, icon = TITLES[name]
    module = importlib.import_module(f"studio.views.{name}")
    return st.Page(module.render, title=title, icon=icon, url_path=name, default=name == "cast")


def all_pages() -> list[st.Page]:
    return [page(name) for name in TITLES]
