"""Script: paste a dialogue in any supported format, edit its lines in a table, hear any line
(daemon TTS) or the whole dialogue, see who speaks when, and give a line its own audio (an
uploaded file or a microphone recording) instead of a synthetic voice."""
from __future__ import annotations

import re
from dataclasses import dataclass

import altair as alt
import pandas as pd
import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from shared.scene import (MAX_CAST, MAX_LINE_CHARS, PAUSE_RANGE, SPEED_RANGE, Line, ProjectError,
                          Scene)
from shared.script import Script, ScriptError, parse_script
from studio import state, widgets
from studio.line_audio import (MAX_UPLOAD_MB, RECORDING_RATE, UPLOAD_TYPES, OwnAudio, accepted,
                               attach_audio, inspect_audio, pause_floor, remove_audio)
from studio.views.cast import BOX_COLOURS, add_person

EXAMPLE = """Alice: Did you see the sunrise this morning?
Bob: I did! The whole sky turned orange.
Alice: We should get up early more often."""
# The parser's names for numbered labels ("Speaker 2", "角色2"): they name a slot, not a person.
_SLOT_NAME = re.compile(r"(Speaker |角色)\d+")
SPEAKERS_VOICE = "(speaker's voice)"   # the voice cell of a line that has no voice of its own
COLUMNS = {"speaker": "Speaker", "text": "Text", "own_audio": "Own audio", "voice": "Voice",
           "speed": "Speed", "pause_after": "Pause after (s)"}
OWN_AUDIO_HELP = ("Use your own audio for this line instead of the synthetic voice: upload a "
                  "file or record one")


def render() -> None:
    scene = state.scene()
    st.title("Script")
    _paste(scene)
    _table(scene)
    if scene.lines:
        _line_list(scene)
        _dialogue(scene)


# ----------------------------------------------------------------------------- paste


def _paste(scene: Scene) -> None:
    with st.expander("Paste a script", expanded=not scene.lines):
        st.caption("Any of these work: `Alice: Hi!` · `[Alice] Hi!` · `**Alice:** Hi!` · "
                   "`(s1) Hi! (s2) Hello!` · `Speaker 1: Hi!` · `小明：你好` · or one line per "
                   "turn without names (two people take turns).")
        text = st.text_area("Script", height=180, placeholder=EXAMPLE,
                            key=state.key("script", "paste"))
        append = st.checkbox("Add after the existing lines instead of replacing them",
                             value=False, key=state.key("script", "append"),
                             disabled=not scene.lines)
        if st.button("Read the script", type="primary", key=state.key("script", "read")):
            with widgets.reported("Reading the script"):
                summary = apply_script(scene, parse_script(text), append=append)
                state.structure_changed()
                state.rebase_lines()
                state.flash("success", summary)
                st.rerun()


def apply_script(scene: Scene, script: Script, append: bool = False) -> str:
    """Put a parsed script's lines into the scene. Each script speaker becomes the cast member
    of the same name, else the next one not yet speaking (renamed to the script's name when it
    has one), adding people as needed. Returns a one-line summary."""
    if not script.lines:
        raise ScriptError("the script has no lines — paste at least one line of dialogue")
    if len(script.speakers) > MAX_CAST:
        raise ScriptError(f"the script has {len(script.speakers)} speakers; a scene holds at "
                          f"most {MAX_CAST}")
    taken: set[int] = set()
    slots: dict[int, int] = {}
    for k, name in enumerate(script.speakers):   # same name first
        match = next((i for i, person in enumerate(scene.cast)
                      if i not in taken and person.name.casefold() == name.casefold()), None)
        if match is not None:
            slots[k] = match
            taken.add(match)
    for k, name in enumerate(script.speakers):   # then the free slots, in order
        if k in slots:
            continue
        free = next((i for i in range(len(scene.cast)) if i not in taken), None)
        if free is None:
            add_person(scene)
            free = len(scene.cast) - 1
        if not _SLOT_NAME.fullmatch(name):
            scene.cast[free].name = name[:60]
        slots[k] = free
        taken.add(free)
    lines = [Line(speaker=slots[line.speaker], text=line.text[:MAX_LINE_CHARS])
             for line in script.lines]
    scene.lines = (scene.lines + lines) if append else lines
    who = ", ".join(f"{scene.cast[slots[k]].name}" for k in range(len(script.speakers)))
    return f"Read {len(lines)} lines spoken by {who}."


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Heard:
    """A line's audio to play in the studio, and the daemon's note (a voice fallback)."""
    wav: bytes
    warning: str | None = None
    mime: str = "audio/wav"


@dataclass(frozen=True)
class _TableBase:
    frame: pd.DataFrame
    audio: list[bytes | None]   # the lines' own audio, by the base row they belong to
    pause_floors: list[float]   # the lowest pause each base row may have (see pause_floor)


def _table(scene: Scene) -> None:
    st.subheader(f"Lines ({len(scene.lines)})")
    catalog, _ = widgets.voice_catalog()
    names = [person.name for person in scene.cast]
    version, base = state.lines_base(tuple(names), lambda: _table_base(scene))
    speakers = list(range(len(scene.cast)))
    edited = st.data_editor(
        base.frame, num_rows="dynamic", hide_index=True, width="stretch",
        key=state.key("lines", version),
        column_config={
            "speaker": st.column_config.SelectboxColumn(
                COLUMNS["speaker"], options=speakers, required=True, width="small",
                default=_next_speaker(scene), format_func=lambda i: names[i] if i < len(names)
                else f"Person {i + 1}"),
            "text": st.column_config.TextColumn(COLUMNS["text"], width="large",
                                                max_chars=MAX_LINE_CHARS, default=""),
            "own_audio": st.column_config.TextColumn(
                COLUMNS["own_audio"], disabled=True, width="small",
                help="Set with the line's :material/mic: button below; voice and speed do not "
                     "apply to a line with its own audio"),
            "voice": st.column_config.SelectboxColumn(
                COLUMNS["voice"], options=[SPEAKERS_VOICE, *(v.id for v in catalog)],
                width="small", default=SPEAKERS_VOICE, required=True,
                help="Another voice for this line only (not for a line with its own audio)"),
            "speed": st.column_config.NumberColumn(
                COLUMNS["speed"], min_value=SPEED_RANGE[0], max_value=SPEED_RANGE[1], step=0.05,
                default=1.0, format="%.2f×", width="small",
                help="How fast the voice speaks (not for a line with its own audio)"),
            "pause_after": st.column_config.NumberColumn(
                COLUMNS["pause_after"], min_value=min([PAUSE_RANGE[0], *base.pause_floors]),
                max_value=PAUSE_RANGE[1], step=0.05, default=0.3, format="%.2f", width="small",
                help="Silence before the next line; negative overlaps it (a line with its own "
                     "audio may overlap by its whole length: both heard at once)"),
        })
    lines = frame_to_lines(edited, base.audio, base.pause_floors, len(scene.cast))
    if lines != scene.lines:
        scene.lines = lines
    st.caption("Add a line with the ＋ row at the bottom; select rows and press Delete to remove "
               "them; use the arrows below to reorder.")
    own = [str(i + 1) for i, line in enumerate(scene.lines) if line.audio is not None]
    if own:
        which = f"Line {own[0]} plays" if len(own) == 1 else f"Lines {', '.join(own)} play"
        st.caption(f":material/mic: {which} the speaker's own audio: voice and speed do not "
                   "apply there, and the text (if any) is the subtitle.")


def _table_base(scene: Scene) -> _TableBase:
    owns = [None if line.audio is None else own_audio(line.audio) for line in scene.lines]
    return _TableBase(
        frame=lines_to_frame(scene.lines, owns),
        audio=[line.audio for line in scene.lines],
        pause_floors=[pause_floor(own.seconds if isinstance(own, OwnAudio) else None)
                      for own in owns])


def _next_speaker(scene: Scene) -> int:
    if not scene.lines:
        return 0
    return (scene.lines[-1].speaker + 1) % len(scene.cast)


def lines_to_frame(lines: list[Line], owns: list[OwnAudio | str | None]) -> pd.DataFrame:
    """The editor's table; `owns` describes each line's own audio (see own_audio)."""
    return pd.DataFrame({
        "speaker": pd.Series([line.speaker for line in lines], dtype="int64"),
        "text": pd.Series([line.text for line in lines], dtype="object"),
        "own_audio": pd.Series([_own_audio_cell(own) for own in owns], dtype="object"),
        "voice": pd.Series([line.voice or SPEAKERS_VOICE for line in lines], dtype="object"),
        "speed": pd.Series([line.speed for line in lines], dtype="float64"),
        "pause_after": pd.Series([line.pause_after for line in lines], dtype="float64"),
    })


def _own_audio_cell(own: OwnAudio | str | None) -> str:
    if own is None:
        return ""
    return own.label if isinstance(own, OwnAudio) else "unreadable"


def frame_to_lines(frame: pd.DataFrame, audio: list[bytes | None], pause_floors: list[float],
                   cast_size: int) -> list[Line]:
    """The editor's rows as Lines. Rows that came from the base keep their index (and so their
    own audio, and the overlap it allows); rows added in the editor have none. Blank cells get
    the defaults."""
    lines = []
    for index, row in frame.iterrows():
        from_base = isinstance(index, int) and 0 <= index < len(audio)
        speaker = _number(row["speaker"], 0)
        voice = row["voice"]
        floor = pause_floors[index] if from_base else PAUSE_RANGE[0]
        lines.append(Line(
            speaker=min(max(int(speaker), 0), cast_size - 1),
            text="" if _blank(row["text"]) else str(row["text"]),
            voice=None if _blank(voice) or str(voice) in ("", SPEAKERS_VOICE) else str(voice),
            speed=min(max(_number(row["speed"], 1.0), SPEED_RANGE[0]), SPEED_RANGE[1]),
            pause_after=min(max(_number(row["pause_after"], 0.3), floor), PAUSE_RANGE[1]),
            audio=audio[index] if from_base else None,
        ))
    return lines


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA


def _number(value: object, default: float) -> float:
    return default if _blank(value) else float(value)


# ----------------------------------------------------------------------------- per line


def _line_list(scene: Scene) -> None:
    st.subheader("Hear, reorder, own audio")
    for i, line in enumerate(scene.lines):
        own = None if line.audio is None else own_audio(line.audio)
        play, up, down, mic, words = st.columns([1, 1, 1, 1.6, 13], vertical_alignment="center",
                                                gap="small")
        if play.button(":material/play_arrow:", key=state.key("line", i, "play"), help="Hear this line"):
            with widgets.reported(f"Line {i + 1}"):
                preview_line(scene, i)
        if up.button(":material/arrow_upward:", key=state.key("line", i, "up"), disabled=i == 0, help="Move up"):
            move_line(scene, i, -1)
            st.rerun()
        if down.button(":material/arrow_downward:", key=state.key("line", i, "down"), help="Move down",
                       disabled=i == len(scene.lines) - 1):
            move_line(scene, i, +1)
            st.rerun()
        with mic:
            _own_audio_menu(scene, i, own)
        words.markdown(line_summary(scene, i, own))
        heard = state.recall(f"preview.{i}", _preview_signature(scene, i))
        if heard is not None:
            st.audio(heard.wav, format=heard.mime, autoplay=True)
            if heard.warning:
                st.caption(f":material/info: {heard.warning}")


def line_summary(scene: Scene, index: int, own: OwnAudio | str | None) -> str:
    """One line in the list: number, speaker, text, and its own audio when it has some."""
    line = scene.lines[index]
    speaker = scene.cast[line.speaker].name if line.speaker < len(scene.cast) else "?"
    parts = [f"**{index + 1}. {speaker}**"]
    if line.text.strip():
        parts.append(_short(line.text))
    if isinstance(own, OwnAudio):
        parts.append(f":material/mic: own audio, {own.label}")
    elif own is not None:
        parts.append(":material/error: own audio unreadable")
    elif not line.text.strip():
        parts.append("(empty)")
    return " · ".join(parts)


def _short(text: str, limit: int = 140) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def own_audio(audio: bytes) -> OwnAudio | str:
    """What a line's own audio is (length, format), or why it cannot be read. Read once per
    session for each distinct file: the page shows it on every run."""
    def inspect() -> OwnAudio | str:
        try:
            return inspect_audio(audio)
        except ProjectError as e:
            return str(e)

    digest = widgets.digest(audio)
    return state.cached(f"own_audio.{digest}", digest, inspect)


def _own_audio_menu(scene: Scene, index: int, own: OwnAudio | str | None) -> None:
    # The label and help stay the same whatever the line holds: they are part of the popover's
    # identity, and a new identity would close it under the person's pointer. Its content runs
    # only while it is open (on_change="rerun"), so 50 lines do not mean 50 uploaders.
    with st.popover(":material/mic:", key=state.key("line", index, "own_audio"),
                    on_change="rerun", help=OWN_AUDIO_HELP) as menu:
        if menu.open:
            _own_audio_panel(scene, index, own)


def _own_audio_panel(scene: Scene, index: int, own: OwnAudio | str | None) -> None:
    line = scene.lines[index]
    name = scene.cast[line.speaker].name if line.speaker < len(scene.cast) else "the speaker"
    if line.audio is not None:
        if isinstance(own, OwnAudio):
            st.markdown(f"**Line {index + 1} plays {name}'s own audio** · {own.label}")
            st.audio(line.audio, format=own.mime)
        else:
            st.error(f"Line {index + 1}'s own audio cannot be read ({own}). Remove it, or "
                     "replace it below.", icon=":material/error:")
        st.caption("Voice and speed do not apply to this line; its text, if any, is the "
                   "subtitle.")
        if st.button("Remove it (use the voice again)", icon=":material/delete:",
                     key=state.key("line", index, "own_audio", "remove")):
            remove_audio(line)
            state.rebase_lines()
            st.rerun()
    else:
        st.markdown(f"**Line {index + 1}: {name}'s own audio instead of the voice**")
        st.caption(f"Accepted: {accepted()}. The line lasts as long as the audio; its text, if "
                   "any, becomes the subtitle.")
        if not line.text.strip():
            st.caption(f":material/warning: Line {index + 1} has no text: give it audio here, "
                       "or write the line in the table.")
    # A key per attached file: once one is attached, the inputs start empty again.
    marker = "none" if line.audio is None else widgets.digest(line.audio)[:16]
    replace = line.audio is not None
    upload = st.file_uploader("Replace with a file" if replace else "Upload a file",
                              type=list(UPLOAD_TYPES), max_upload_size=MAX_UPLOAD_MB,
                              help=f"Accepted: {accepted()}.",
                              key=state.key("line", index, "own_audio", "upload", marker))
    recording = st.audio_input("Record again" if replace else "Record",
                               sample_rate=RECORDING_RATE,
                               key=state.key("line", index, "own_audio", "record", marker))
    for source, what, part in ((upload, None, "upload"), (recording, "the recording", "record")):
        _take_audio(scene, index, source, what, state.key("line", index, "own_audio", part, marker))


def _take_audio(scene: Scene, index: int, source: UploadedFile | None, what: str | None,
                widget_key: str) -> None:
    """Attach a file the person just gave (once; the uploader keeps it between runs), or show
    why it was refused for as long as it sits there."""
    if source is None:
        state.set_note(widget_key, None)
        return
    if state.first_sight(widget_key, source.file_id):
        try:
            attach_audio(scene.lines[index], source.getvalue(), what or source.name)
        except ProjectError as e:
            state.set_note(widget_key, f"{e}. Use {accepted()}.")
        else:
            state.set_note(widget_key, None)
            state.rebase_lines()   # the table keeps each row's audio: give it the new one
            st.rerun()
    problem = state.note(widget_key)
    if problem:
        st.error(problem, icon=":material/error:")


def move_line(scene: Scene, index: int, step: int) -> None:
    other = index + step
    if 0 <= other < len(scene.lines):
        scene.lines[index], scene.lines[other] = scene.lines[other], scene.lines[index]
        state.rebase_lines()
        state.structure_changed()


def _preview_signature(scene: Scene, index: int) -> tuple:
    line = scene.lines[index]
    audio = None if line.audio is None else widgets.digest(line.audio)
    return (line.text, scene.voice_of(index), line.speed, audio)


def preview_line(scene: Scene, index: int) -> None:
    """Speak one line through the daemon (which caches it) and remember the audio to play. A
    line with its own audio plays that file here: a `tts` request carries text only."""
    line = scene.lines[index]
    if line.audio is not None:
        own = own_audio(line.audio)
        heard = Heard(line.audio, mime=own.mime if isinstance(own, OwnAudio) else "audio/wav")
    elif not line.text.strip():
        st.warning(f"Line {index + 1} is empty: write what {scene.cast[line.speaker].name} says, "
                   "or give it its own audio with the :material/mic: button.")
        return
    else:
        widgets.require_daemon()
        speech = state.client().tts(line.text, scene.voice_of(index), line.speed,
                                    timeout=widgets.SLOW_TIMEOUT_S)
        heard = Heard(speech.wav, speech.warning)
    state.remember(f"preview.{index}", _preview_signature(scene, index), heard)


# ----------------------------------------------------------------------------- the whole dialogue


def _dialogue(scene: Scene) -> None:
    st.subheader("The whole dialogue")
    signature = state.scene_digest(scene)
    if st.button("Play the whole dialogue", icon=":material/play_circle:", key=state.key("dialogue", "play")):
        with widgets.reported("Building the dialogue"):
            widgets.require_daemon()
            state.remember("soundtrack", signature,
                           state.client().soundtrack(scene, timeout=widgets.SLOW_TIMEOUT_S))
    track = state.recall("soundtrack", signature)
    if track is None:
        st.caption("Press play to hear every line in order with its pauses, and see who speaks "
                   "when.")
        return
    st.audio(track.wav, format="audio/wav")
    st.altair_chart(timeline_chart(scene, track.timings), width="stretch")
    st.caption(f"{track.duration:.1f} s in all.")
    widgets.notes(track.warnings)


def timeline_chart(scene: Scene, timings) -> alt.Chart:
    """One bar per line: who speaks (row and colour) from when to when."""
    names = [f"{i + 1}. {person.name}" for i, person in enumerate(scene.cast)]
    rows = pd.DataFrame({
        "who": [names[t.speaker] for t in timings],
        "start": [t.start for t in timings],
        "end": [t.end for t in timings],
        "line": [t.line + 1 for t in timings],
        "text": [_timeline_text(scene, t.line) for t in timings],
    })
    colours = alt.Scale(domain=names, range=list(BOX_COLOURS[:len(names)]))
    return alt.Chart(rows).mark_bar(cornerRadius=3).encode(
        x=alt.X("start:Q", title="seconds", axis=alt.Axis(tickMinStep=1.0)),
        x2="end:Q",
        y=alt.Y("who:N", title=None, sort=names, scale=alt.Scale(paddingInner=0.35),
                axis=alt.Axis(labelFontSize=13, labelLimit=200)),
        color=alt.Color("who:N", scale=colours, legend=None),
        tooltip=["line:Q", "who:N", alt.Tooltip("start:Q", format=".2f"),
                 alt.Tooltip("end:Q", format=".2f"), "text:N"],
    ).properties(height=alt.Step(36))


def _timeline_text(scene: Scene, index: int) -> str:
    if index >= len(scene.lines):
        return ""
    line = scene.lines[index]
    if line.audio is not None and not line.text.strip():
        return "(own audio)"
    return _short(line.text, 80)
