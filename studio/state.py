"""The studio's session state — the only module that names `st.session_state` keys.

A browser session holds one `Scene` (the source of truth every page edits), one DaemonClient
(ZMQ sockets are not thread-safe, so never shared across sessions) and a few caches. Widgets
show values from the Scene and write what the person typed back into it; their keys come from
`key()`, which carries a revision number so that replacing the Scene (loading a project) or
changing its structure (removing a person) gives every widget a fresh key seeded from the Scene
instead of a stale value.

Autosave: at the end of every script run the Scene is written to `<studio dir>/autosave.duet`
when it changed (atomically), and a new session starts from that file, so nothing typed is lost
on a browser reload or a studio restart. An unfinished scene (no portrait yet, no lines) is not a
valid project, so the autosave is written in the project layout without validation and read
back leniently.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from shared.protocol import DEFAULT_ADDRESS
from shared.scene import (
    DEFAULT_NEGATIVE_PROMPT,
    MAX_PROJECT_BYTES,
    PROJECT_DOCUMENT,
    Background,
    Crop,
    Line,
    Person,
    Placement,
    ProjectError,
    Scene,
    Settings,
    default_placements,
    default_prompt,
    load_project,
    scene_to_document,
)
from shared.voices import DEFAULT_VOICES, FEMALE, MALE
from studio.client import DaemonClient

T = TypeVar("T")

AUTOSAVE_NAME = "autosave.duet"
QUICK_TIMEOUT_S = 3.0   # info, voices, status, list: a page never waits longer on the daemon

# Every session-state key the studio uses.
_SCENE = "duet.scene"
_REVISION = "duet.revision"
_CLIENT = "duet.client"
_SAVED_DIGEST = "duet.saved_digest"
_FLASHES = "duet.flashes"
_SEEN_UPLOADS = "duet.seen_uploads"
_LINES_BASE = "duet.lines_base"
_CACHE = "duet.cache"
_JOB = "duet.job"
_NOTES = "duet.notes"


@dataclass(frozen=True)
class StudioConfig:
    daemon_address: str
    studio_dir: Path

    @property
    def autosave_path(self) -> Path:
        return self.studio_dir / AUTOSAVE_NAME


def config() -> StudioConfig:
    """The studio's settings, read from the environment in this one place:
    DUET_DAEMON (default tcp://127.0.0.1:8418) and DUET_STUDIO_DIR (default <repo>/.studio)."""
    repo = Path(__file__).resolve().parents[1]
    return StudioConfig(
        daemon_address=os.environ.get("DUET_DAEMON") or DEFAULT_ADDRESS,
        studio_dir=Path(os.environ.get("DUET_STUDIO_DIR") or repo / ".studio"),
    )


# ----------------------------------------------------------------------------- the scene


def new_scene() -> Scene:
    """What a first visit starts with: two people (default voices, side by side), no lines."""
    voices = DEFAULT_VOICES["en-us"]
    cast = [new_person(i, placement) for i, placement in enumerate(default_placements(2))]
    cast[1].voice = voices[MALE]
    return Scene(cast=cast, lines=[], prompt=default_prompt(2),
                 negative_prompt=DEFAULT_NEGATIVE_PROMPT, settings=Settings(),
                 background=Background("color"))


def new_person(index: int, placement: Placement) -> Person:
    return Person(name=f"Person {index + 1}", image=None, crop=Crop(0.0, 0.0, 1.0, 1.0),
                  placement=placement, voice=DEFAULT_VOICES["en-us"][FEMALE], lang="en-us")


def scene() -> Scene:
    """This session's Scene; a new session starts from the autosave (or a new scene)."""
    if _SCENE not in st.session_state:
        loaded, note = read_autosave(config().autosave_path)
        st.session_state[_SCENE] = loaded
        st.session_state[_REVISION] = 0
        st.session_state[_SAVED_DIGEST] = scene_digest(loaded)
        if note:
            flash("warning", note)
    return st.session_state[_SCENE]


def replace_scene(new: Scene) -> None:
    """Swap in another Scene (a loaded project, a re-opened job): every widget starts afresh."""
    st.session_state[_SCENE] = new
    structure_changed()
    st.session_state[_CACHE] = {}
    st.session_state[_NOTES] = {}


def structure_changed() -> None:
    """People or lines were added, removed or reordered: keys by index now mean something else."""
    st.session_state[_REVISION] = st.session_state.get(_REVISION, 0) + 1


def key(*parts: object) -> str:
    """A widget key for this revision of the Scene, e.g. key("cast", 0, "name")."""
    return ".".join(["w", str(st.session_state.get(_REVISION, 0)), *map(str, parts)])


# ----------------------------------------------------------------------------- autosave


def autosave() -> str | None:
    """Write the Scene if it changed since the last write. Returns a message when it could not."""
    current = scene()
    digest = scene_digest(current)
    if digest == st.session_state.get(_SAVED_DIGEST):
        return None
    try:
        write_autosave(current, config().autosave_path)
    except (OSError, ProjectError) as e:
        return (f"Autosave failed ({e}); save the project from the sidebar to keep your work, "
                f"or make {config().studio_dir} writable (DUET_STUDIO_DIR chooses another folder).")
    st.session_state[_SAVED_DIGEST] = digest
    return None


def scene_digest(current: Scene) -> str:
    document, assets = scene_to_document(current)
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode())
    for name in sorted(assets):
        digest.update(name.encode())
        digest.update(assets[name])
    return digest.hexdigest()


def draft_bytes(current: Scene) -> bytes:
    """The Scene in the project-file layout, without the validation save_project applies
    (an unfinished scene is still worth keeping)."""
    document, assets = scene_to_document(current)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(PROJECT_DOCUMENT, json.dumps(document, indent=2, ensure_ascii=False),
                         compress_type=zipfile.ZIP_DEFLATED)
        for name in sorted(assets):
            archive.writestr(name, assets[name])
    return buffer.getvalue()


def write_autosave(current: Scene, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(draft_bytes(current))
        os.replace(temporary, path)  # atomic: a crash leaves the old file or the new one
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_autosave(path: Path) -> tuple[Scene, str | None]:
    """The autosaved Scene, or a new one (with a note saying why, if the file was unreadable:
    it is kept beside as autosave.duet.unreadable)."""
    if not path.is_file():
        return new_scene(), None
    try:
        data = path.read_bytes()
        try:
            return load_project(data), None
        except ProjectError:
            return scene_from_draft(data), None
    except (OSError, ProjectError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        kept = path.with_name(path.name + ".unreadable")
        try:
            os.replace(path, kept)
        except OSError:
            kept = path
        return new_scene(), (f"The autosaved project could not be read ({e}); starting a new "
                             f"one. The old file is at {kept}.")


def scene_from_draft(data: bytes) -> Scene:
    """Read an autosave that is not (yet) a valid project: the same layout, fields as written."""
    if len(data) > MAX_PROJECT_BYTES:
        raise ProjectError(f"the autosave is larger than {MAX_PROJECT_BYTES} bytes")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        document = json.loads(archive.read(PROJECT_DOCUMENT))

        def asset(name: str | None) -> bytes | None:
            return None if name is None else archive.read(name)

        cast = [Person(name=p["name"], image=asset(p["image"]), crop=Crop(**p["crop"]),
                       placement=Placement(**p["placement"]), voice=p["voice"], lang=p["lang"])
                for p in document["cast"]]
        lines = [Line(speaker=int(l["speaker"]), text=l["text"], voice=l["voice"],
                      speed=float(l["speed"]), pause_after=float(l["pause_after"]),
                      audio=asset(l["audio"])) for l in document["lines"]]
        background = Background(kind=document["background"]["kind"],
                                color=document["background"]["color"],
                                image=asset(document["background"]["image"]))
    return Scene(cast=cast, lines=lines, prompt=document["prompt"],
                 negative_prompt=document["negative_prompt"],
                 settings=Settings(**document["settings"]), background=background,
                 title=document["title"])


# ----------------------------------------------------------------------------- the daemon


def client() -> DaemonClient:
    """This session's own client (created on first use, never shared with another session)."""
    if _CLIENT not in st.session_state:
        st.session_state[_CLIENT] = DaemonClient(config().daemon_address, timeout=QUICK_TIMEOUT_S)
    return st.session_state[_CLIENT]


def current_job() -> str | None:
    """The job the Render page follows."""
    return st.session_state.get(_JOB)


def follow_job(job_id: str | None) -> None:
    st.session_state[_JOB] = job_id


# ----------------------------------------------------------------------------- small stores


def flash(kind: str, message: str) -> None:
    """A message to show at the top of the next page run ("success", "info", "warning", "error")."""
    st.session_state.setdefault(_FLASHES, []).append((kind, message))


def take_flashes() -> list[tuple[str, str]]:
    return st.session_state.pop(_FLASHES, [])


def first_sight(upload_key: str, file_id: str) -> bool:
    """True the first time this uploaded file is seen under this key (so an upload is handled
    once, not on every rerun while it sits in the uploader)."""
    seen: dict[str, str] = st.session_state.setdefault(_SEEN_UPLOADS, {})
    if seen.get(upload_key) == file_id:
        return False
    seen[upload_key] = file_id
    return True


def cached(name: str, signature: object, compute: Callable[[], T],
           max_age_s: float | Callable[[T], float] | None = None) -> T:
    """This session's last result of `compute` for `name`, recomputed when `signature` changes
    or the result is older than max_age_s (a number, or a function of the result)."""
    store: dict[str, tuple[object, float, Any]] = st.session_state.setdefault(_CACHE, {})
    entry = store.get(name)
    now = time.monotonic()
    if entry is not None and entry[0] == signature:
        limit = max_age_s(entry[2]) if callable(max_age_s) else max_age_s
        if limit is None or now - entry[1] < limit:
            return entry[2]
    value = compute()
    store[name] = (signature, now, value)
    return value


def remember(name: str, signature: object, value: Any) -> None:
    """Store a result for `recall` (e.g. a line's preview audio, the dialogue soundtrack)."""
    st.session_state.setdefault(_CACHE, {})[name] = (signature, time.monotonic(), value)


def recall(name: str, signature: object) -> Any | None:
    entry = st.session_state.get(_CACHE, {}).get(name)
    return entry[2] if entry is not None and entry[0] == signature else None


def forget(name: str) -> None:
    st.session_state.get(_CACHE, {}).pop(name, None)


def note(name: str) -> str | None:
    """A remembered one-line note (e.g. what face detection found for a person)."""
    return st.session_state.get(_NOTES, {}).get(name)


def set_note(name: str, text: str | None) -> None:
    st.session_state.setdefault(_NOTES, {})[name] = text


def lines_base(signature: object, build: Callable[[], T]) -> tuple[int, T]:
    """The table the line editor starts from, and its version (part of the editor's key).

    The editor stores only edits relative to this table, so it must stay fixed while the person
    edits; it is rebuilt from the Scene when `signature` changes (e.g. cast names), after a
    structure change or a new Scene, and after `rebase_lines()`. The Scene holds every edit
    already, so rebuilding loses nothing."""
    signature = (st.session_state.get(_REVISION, 0), signature)
    version, old_signature, table = st.session_state.get(_LINES_BASE, (0, None, None))
    if old_signature != signature or table is None:
        version, table = version + 1, build()
        st.session_state[_LINES_BASE] = (version, signature, table)
    return version, table


def rebase_lines() -> None:
    version, _, _ = st.session_state.get(_LINES_BASE, (0, None, None))
    st.session_state[_LINES_BASE] = (version, None, None)
