"""SRT and WebVTT subtitles from the soundtrack's line timings.

Each line with text becomes one or more cues of at most two rows of about 42 columns (the usual
broadcast/streaming limit; CJK characters are double width, so 21 of them fill a row). A line
too long for one cue is split into consecutive cues that share its time span in proportion to
their length. Lines without text (a user recording with no transcript) get no cue. Overlapping
lines give overlapping cues; players stack them.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Sequence

MAX_ROW_WIDTH = 42
MAX_ROWS_PER_CUE = 2


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    rows: tuple[str, ...]


def to_srt(timings: Sequence, names: Sequence[str] | None = None) -> str:
    blocks = []
    for number, cue in enumerate(make_cues(timings, names), start=1):
        blocks.append(f"{number}\n{_clock(cue.start, ',')} --> {_clock(cue.end, ',')}\n"
                      + "\n".join(cue.rows) + "\n")
    return "\n".join(blocks)


def to_vtt(timings: Sequence, names: Sequence[str] | None = None) -> str:
    blocks = ["WEBVTT\n"]
    for cue in make_cues(timings, names):
        # "<" starts a tag and "&" an entity in WebVTT cue text.
        rows = [row.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                for row in cue.rows]
        blocks.append(f"{_clock(cue.start, '.')} --> {_clock(cue.end, '.')}\n"
                      + "\n".join(rows) + "\n")
    return "\n".join(blocks)


def make_cues(timings: Sequence, names: Sequence[str] | None = None) -> list[Cue]:
    """Cues for LineTiming-like items (start, end, text, speaker), in line order.

    With `names`, each line's first cue starts with "Name: ".
    """
    cues = []
    for timing in timings:
        text = " ".join(timing.text.split())
        if not text:
            continue
        if names is not None:
            text = f"{names[timing.speaker]}: {text}"
        rows = wrap(text, MAX_ROW_WIDTH)
        groups = [rows[i:i + MAX_ROWS_PER_CUE] for i in range(0, len(rows), MAX_ROWS_PER_CUE)]
        widths = [sum(width(row) for row in group) for group in groups]
        span = timing.end - timing.start
        start = timing.start
        done = 0
        for group, group_width in zip(groups, widths):
            done += group_width
            end = timing.start + span * done / sum(widths)
            cues.append(Cue(start, end, tuple(group)))
            start = end
    return cues


def wrap(text: str, limit: int) -> list[str]:
    """Rows of at most `limit` columns, breaking at spaces; a word wider than a row (or a
    run of CJK text, which has no spaces) is broken between characters."""
    pieces = []
    for word in text.split():
        pieces.extend(_break_word(word, limit))
    rows: list[str] = []
    for piece in pieces:
        if rows and width(rows[-1]) + 1 + width(piece) <= limit:
            rows[-1] = f"{rows[-1]} {piece}"
        else:
            rows.append(piece)
    return rows


def width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def _break_word(word: str, limit: int) -> list[str]:
    pieces = [""]
    for char in word:
        if pieces[-1] and width(pieces[-1] + char) > limit:
            pieces.append("")
        pieces[-1] += char
    return pieces


def _clock(seconds: float, decimal_mark: str) -> str:
    millis = int(round(max(0.0, seconds) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_mark}{millis:03d}"
