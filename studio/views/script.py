"""Script: paste a dialogue in any supported format, edit its lines in a table, hear any line
(daemon TTS) or the whole dialogue, and see who speaks when."""
from __future__ import annotations

import re
from dataclasses import dataclass

import altair as alt
import pandas as pd
import streamlit as st

from shared.scene import MAX_CAST, MAX_LINE_CHARS, PAUSE_RANGE, SPEED_RANGE, Line, Scene
from shared.script import Script, ScriptError, parse_script
from studio import state, widgets
from studio.views.cast import BOX_COLOURS, add_person

EXAMPLE = """Alice: Did you see the sunrise this morning?
Bob: I did! The whole sky turned orange.
Alice: We should get up early more often."""
# The parser's names for numbered labels ("Speaker 2", "角色2"): they name a slot, not a person.
_SLOT_NAME = re.compile(r"(Speaker |角色)\d+")
SPEAKERS_VOICE = "(speaker's voice)"   # the voice cell of a line that has no voice of its own
COLUMNS = {"speaker": "Speaker", "text": "Text", "voice": "Voice",
           "speed": "Speed", "pause_after": "Pause after (s)"}


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


@dataclass(frozen=True)
class _TableBase:
    frame: pd.DataFrame
    audio: list[bytes | None]   # user recordings, by the base row they belong to


def _table(scene: Scene) -> None:
    st.subheader(f"Lines ({len(scene.lines)})")
    catalog, _ = widgets.voice_catalog()
    names = [person.name for person in scene.cast]
    version, base = state.lines_base(tuple(names), lambda: _TableBase(
        lines_to_frame(scene.lines), [line.audio for line in scene.lines]))
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
            "voice": st.column_config.SelectboxColumn(
                COLUMNS["voice"], options=[SPEAKERS_VOICE, *(v.id for v in catalog)],
                width="small", default=SPEAKERS_VOICE, required=True,
                help="Another voice for this line only"),
            "speed": st.column_config.NumberColumn(
                COLUMNS["speed"], min_value=SPEED_RANGE[0], max_value=SPEED_RANGE[1], step=0.05,
                default=1.0, format="%.2f×", width="small"),
            "pause_after": st.column_config.NumberColumn(
                COLUMNS["pause_after"], min_value=PAUSE_RANGE[0], max_value=PAUSE_RANGE[1],
                step=0.05, default=0.3, format="%.2f", width="small",
                help="Silence before the next line; negative overlaps it"),
        })
    lines = frame_to_lines(edited, base.audio, len(scene.cast))
    if lines != scene.lines:
        scene.lines = lines
    st.caption("Add a line with the ＋ row at the bottom; select rows and press Delete to remove "
               "them; use the arrows below to reorder.")


def _next_speaker(scene: Scene) -> int:
    if not scene.lines:
        return 0
    return (scene.lines[-1].speaker + 1) % len(scene.cast)


def lines_to_frame(lines: list[Line]) -> pd.DataFrame:
    return pd.DataFrame({
        "speaker": pd.Series([line.speaker for line in lines], dtype="int64"),
        "text": pd.Series([line.text for line in lines], dtype="object"),
        "voice": pd.Series([line.voice or SPEAKERS_VOICE for line in lines], dtype="object"),
        "speed": pd.Series([line.speed for line in lines], dtype="float64"),
        "pause_after": pd.Series([line.pause_after for line in lines], dtype="float64"),
    })


def frame_to_lines(frame: pd.DataFrame, audio: list[bytes | None], cast_size: int) -> list[Line]:
    """The editor's rows as Lines. Rows that came from the base keep their index (and so their
    recording); rows added in the editor have none. Blank cells get the defaults."""
    lines = []
    for index, row in frame.iterrows():
        speaker = _number(row["speaker"], 0)
        voice = row["voice"]
        lines.append(Line(
            speaker=min(max(int(speaker), 0), cast_size - 1),
            text="" if _blank(row["text"]) else str(row["text"]),
            voice=None if _blank(voice) or str(voice) in ("", SPEAKERS_VOICE) else str(voice),
            speed=min(max(_number(row["speed"], 1.0), SPEED_RANGE[0]), SPEED_RANGE[1]),
            pause_after=min(max(_number(row["pause_after"], 0.3), PAUSE_RANGE[0]),
                            PAUSE_RANGE[1]),
            audio=audio[index] if isinstance(index, int) and 0 <= index < len(audio) else None,
        ))
    return lines


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA


def _number(value: object, default: float) -> float:
    return default if _blank(value) else float(value)


# ----------------------------------------------------------------------------- per line


def _line_list(scene: Scene) -> None:
    st.subheader("Hear and reorder")
    for i, line in enumerate(scene.lines):
        play, up, down, words = st.columns([1, 1, 1, 14], vertical_alignment="center",
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
        speaker = scene.cast[line.speaker].name if line.speaker < len(scene.cast) else "?"
        text = line.text if line.text.strip() else ("(own recording)" if line.audio else "(empty)")
        words.markdown(f"**{i + 1}. {speaker}** · {_short(text)}")
        heard = state.recall(f"preview.{i}", _preview_signature(scene, i))
        if heard is not None:
            st.audio(heard.wav, format="audio/wav", autoplay=True)
            if heard.warning:
                st.caption(f":material/info: {heard.warning}")


def _short(text: str, limit: int = 140) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def move_line(scene: Scene, index: int, step: int) -> None:
    other = index + step
    if 0 <= other < len(scene.lines):
        scene.lines[index], scene.lines[other] = scene.lines[other], scene.lines[index]
        state.rebase_lines()
        state.structure_changed()


def _preview_signature(scene: Scene, index: int) -> tuple:
    line = scene.lines[index]
    return (line.text, scene.voice_of(index), line.speed, line.audio is not None)


def preview_line(scene: Scene, index: int) -> None:
    """Speak one line through the daemon (which caches it) and remember the audio to play."""
    line = scene.lines[index]
    if line.audio is not None:
        heard = Heard(line.audio)
    elif not line.text.strip():
        st.warning(f"Line {index + 1} is empty: write what {scene.cast[line.speaker].name} says.")
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
        "text": [_short(scene.lines[t.line].text if t.line < len(scene.lines) else "", 80)
                 for t in timings],
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
