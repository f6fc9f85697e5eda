"""Dialogue-script parser: turns a pasted conversation into speakers and lines.

Speaker labels it accepts (at the start of a line, unless noted):
  (s1) Hi. (s2) Hello!        numbered markers; ANYWHERE in a line, several per line; full-width
                              brackets （s1） too; a colon right after the marker is dropped
  Speaker 1: …  S1: …         numbered colon labels, named "Speaker N"
  角色1：…                     numbered colon label, keeps the name "角色N"
  Alice: …  小明：…  Dr. Lee: …  named colon labels (ASCII ":" or full-width "：")
  [Alice] …  [Alice]: …  【小明】…   bracketed names; an all-lowercase word in brackets, such as
                              "[laughs]", is a stage direction and stays in the text
  **Alice:** …  **Alice**: …  *Alice:* …  __Alice:__ …   markdown bold or italic names
A name is at most 30 characters and 4 words, starts with a letter or digit, contains a letter, and
holds only letters, digits, spaces and - ' ’ _ · (a "." only in the titles Mr. Mrs. Ms. Mx. Dr.
Prof. St. Jr. Sr.).
An ASCII colon must be followed by a space, the end of the line or a non-ASCII character, so
"10:30 …" and "https://…" never start a label. The first colon decides: "A: at 10:30" is speaker
A saying "at 10:30", and "Note: at 10:30 we go" can only make "Note" a label, never "at 10".

Labelled or free format: the script is labelled when any line carries a numbered label, when at
least two lines start with a label, or when every line does. Otherwise it is free format: every
line is one turn, alternating between "Speaker 1" and "Speaker 2" (a one-line script has only
"Speaker 1"), and a lone "Note: …" line stays text. In a labelled script an unlabelled line
continues the previous turn, and text before the first label is an error naming its line (a title
line would otherwise be spoken by someone). A title that itself looks like a label ("Episode 3: The
Plan") cannot be told apart from one and becomes a speaker.

Speaker indices: numbered labels take index N−1, and the speaker list is at least N long (an unused
number is still a slot, named like the script's first numbered label: "Speaker N" or "角色N").
Named speakers follow the numbered slots, in order of first appearance. Names match
case-insensitively; the first spelling is kept.

Text: whitespace is trimmed and inner runs become one space; blank lines are dropped; continuation
lines join with a space, or with nothing where either side of the join is a Chinese or Japanese
character. Repeated labels stay separate turns. A label that never gets text ("A:" followed by
another label) is dropped, and a speaker whose labels all are empty is not listed.

Command line: `python -m shared.script FILE` (or `-` for standard input) prints the script as JSON;
unusable input exits with status 2 and a one-line reason on standard error.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

MAX_SPEAKER_NUMBER = 100       # guards against "(s100000)" creating a huge cast
MAX_NAME_CHARS = 30
MAX_NAME_WORDS = 4
FREE_FORMAT_SPEAKERS = ("Speaker 1", "Speaker 2")


@dataclass(frozen=True)
class ScriptLine:
    speaker: int               # index into Script.speakers
    text: str


@dataclass(frozen=True)
class Script:
    speakers: list[str]
    lines: list[ScriptLine]


class ScriptError(ValueError):
    """The text cannot be read as a dialogue. `line` is the 1-based line at fault, if any."""

    def __init__(self, reason: str, line: int | None = None):
        super().__init__(f"line {line}: {reason}" if line is not None else reason)
        self.line = line


@dataclass(frozen=True)
class _Label:
    name: str                  # display name: "Alice", "Speaker 2", "角色2"
    number: int | None = None  # N of a numbered label
    prefix: str = ""           # how this numbered label spells its slots: "Speaker " or "角色"


@dataclass(frozen=True)
class _Segment:
    label: _Label | None       # None: text that continues the previous turn
    text: str


@dataclass(frozen=True)
class _SourceLine:
    number: int                # 1-based line number in the pasted text
    text: str                  # the whole line, whitespace collapsed
    segments: list[_Segment]


@dataclass
class _Turn:
    label: _Label
    text: str


_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_INVISIBLE = re.compile("[\x00-\x08\x0e-\x1f\x7f\u200b\ufeff]")   # controls, zero-width space, BOM
_WHITESPACE = re.compile(r"\s+")
_MARKER = re.compile(r"[(（]\s*[sS]\s*(\d+)\s*[)）]\s*[:：]?")
_BRACKETED = re.compile(r"(?:\[([^\]]*)\]|【([^】]*)】)\s*[:：]?")
_EMPHASISED = re.compile(r"(\*\*|__|\*)\s*(.+?)\s*(?:[:：]\s*\1|\1\s*[:：])")
_NUMBERED_NAME = re.compile(r"(?:(s|speaker)|(角色))\s*(\d+)", re.IGNORECASE)
# The only words in a name that may hold a "." — elsewhere a full stop means prose, not a name.
_TITLES = frozenset({"mr.", "mrs.", "ms.", "mx.", "dr.", "prof.", "st.", "jr.", "sr."})
_NAME_PUNCTUATION = frozenset("-'’_·.")
# Chinese and Japanese are written without spaces between words; Korean uses spaces.
_UNSPACED_SCRIPT = re.compile("[\u2e80-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003ffff]")


def parse_script(text: str) -> Script:
    """Parses a pasted dialogue; raises ScriptError with a one-line reason when it cannot."""
    source = _read_lines(text)
    if not source:
        raise ScriptError("the script is empty")
    if _is_labelled(source):
        return _labelled_script(source)
    return _free_format_script(source)


def to_json(script: Script) -> dict:
    return {
        "speakers": list(script.speakers),
        "lines": [{"speaker": line.speaker, "text": line.text} for line in script.lines],
    }


def _read_lines(text: str) -> list[_SourceLine]:
    lines = []
    for number, raw in enumerate(_LINE_BREAK.split(text), start=1):
        line = _WHITESPACE.sub(" ", _INVISIBLE.sub("", raw)).strip()
        if line:
            lines.append(_SourceLine(number, line, _split_line(line, number)))
    return lines


def _split_line(line: str, line_number: int) -> list[_Segment]:
    """Cuts one line into turns at its leading label and at every (sN) marker."""
    label, rest = _leading_label(line, line_number)
    segments = []
    start = 0
    for marker in _MARKER.finditer(rest):
        segments.append(_Segment(label, rest[start:marker.start()].strip()))
        token = marker.group(0).rstrip(":： ")
        label = _numbered_label(marker.group(1), "Speaker ", token, line_number)
        start = marker.end()
    segments.append(_Segment(label, rest[start:].strip()))
    # A line that opens with a marker leaves an empty unlabelled piece in front of it.
    return [segment for segment in segments if segment.label is not None or segment.text]


def _leading_label(line: str, line_number: int) -> tuple[_Label | None, str]:
    """The label a line starts with (colon, bracket or emphasis form) and the text after it."""
    bracketed = _BRACKETED.match(line)
    if bracketed:
        name = (bracketed.group(1) or bracketed.group(2) or "").strip()
        if _is_name(name):
            label = _named_label(name, line_number)
            # "[laughs]", "[pause]": lowercase words in brackets are stage directions.
            if label.number is not None or not name.islower():
                return label, line[bracketed.end():]
    emphasised = _EMPHASISED.match(line)
    if emphasised and _is_name(emphasised.group(2)):
        return _named_label(emphasised.group(2), line_number), line[emphasised.end():]
    colon = re.search("[:：]", line)
    if colon:
        name, rest = line[:colon.start()].strip(), line[colon.end():]
        # After an ASCII colon a space must follow ("Alice: hi"), which rules out "10:30" and
        # "https://"; Chinese text puts no space after either colon ("小明:你好", "小明：你好").
        spaced = colon.group() == "：" or not rest or rest[0] == " " or not rest[0].isascii()
        if spaced and _is_name(name):
            return _named_label(name, line_number), rest
    return None, line


def _is_name(candidate: str) -> bool:
    if not 1 <= len(candidate) <= MAX_NAME_CHARS or not candidate[0].isalnum():
        return False
    if not any(char.isalpha() for char in candidate):
        return False
    words = candidate.split()
    if len(words) > MAX_NAME_WORDS:
        return False
    for word in words:
        if "." in word and word.casefold() not in _TITLES:
            return False
        if not all(char.isalnum() or char in _NAME_PUNCTUATION for char in word):
            return False
    return True


def _named_label(name: str, line_number: int) -> _Label:
    name = " ".join(name.split())
    numbered = _NUMBERED_NAME.fullmatch(name)
    if numbered:
        prefix = "角色" if numbered.group(2) else "Speaker "
        return _numbered_label(numbered.group(3), prefix, name, line_number)
    return _Label(name)


def _numbered_label(digits: str, prefix: str, token: str, line_number: int) -> _Label:
    number = int(digits) if len(digits) <= 6 else MAX_SPEAKER_NUMBER + 1
    if number < 1:
        raise ScriptError(f"{token} — speaker numbers start at 1", line_number)
    if number > MAX_SPEAKER_NUMBER:
        raise ScriptError(f"{token} — speaker numbers go up to {MAX_SPEAKER_NUMBER}", line_number)
    return _Label(f"{prefix}{number}", number, prefix)


def _is_labelled(source: list[_SourceLine]) -> bool:
    if any(segment.label is not None and segment.label.number is not None
           for line in source for segment in line.segments):
        return True
    starts_labelled = sum(1 for line in source if line.segments[0].label is not None)
    return starts_labelled >= 2 or starts_labelled == len(source)


def _free_format_script(source: list[_SourceLine]) -> Script:
    lines = [ScriptLine(index % 2, line.text) for index, line in enumerate(source)]
    speakers = list(FREE_FORMAT_SPEAKERS[:min(len(FREE_FORMAT_SPEAKERS), len(lines))])
    return Script(speakers, lines)


def _labelled_script(source: list[_SourceLine]) -> Script:
    turns = _collect_turns(source)
    spoken = [turn for turn in turns if turn.text]
    if not spoken:
        raise ScriptError("the script has speaker labels but no text to speak")
    speakers, index_of = _assign_speakers([turn.label for turn in spoken])
    lines = [ScriptLine(index_of(turn.label), turn.text) for turn in spoken]
    return Script(speakers, lines)


def _collect_turns(source: list[_SourceLine]) -> list[_Turn]:
    turns: list[_Turn] = []
    for line in source:
        for segment in line.segments:
            if segment.label is not None:
                turns.append(_Turn(segment.label, segment.text))
            elif turns:
                turns[-1].text = _join(turns[-1].text, segment.text)
            else:
                first_label = next(later.number for later in source
                                   if any(s.label is not None for s in later.segments))
                raise ScriptError(
                    f'"{_excerpt(segment.text)}" comes before the first speaker label '
                    f'(line {first_label}) — give it a label such as "A:" or delete it',
                    line.number)
    return turns


def _assign_speakers(labels: list[_Label]) -> tuple[list[str], Callable[[_Label], int]]:
    """Numbered labels take slot N−1; named speakers follow in order of first appearance."""
    numbered = [label for label in labels if label.number is not None]
    slot_prefix = numbered[0].prefix if numbered else "Speaker "
    slots = max((label.number for label in numbered), default=0)
    speakers = [f"{slot_prefix}{number}" for number in range(1, slots + 1)]
    named_slots: set[int] = set()
    for label in numbered:
        if label.number not in named_slots:
            speakers[label.number - 1] = label.name
            named_slots.add(label.number)
    named_index: dict[str, int] = {}
    for label in labels:
        if label.number is None and label.name.casefold() not in named_index:
            named_index[label.name.casefold()] = len(speakers)
            speakers.append(label.name)

    def index_of(label: _Label) -> int:
        if label.number is not None:
            return label.number - 1
        return named_index[label.name.casefold()]

    return speakers, index_of


def _join(before: str, after: str) -> str:
    if not before or not after:
        return before or after
    if _UNSPACED_SCRIPT.match(before[-1]) or _UNSPACED_SCRIPT.match(after[0]):
        return before + after
    return f"{before} {after}"


def _excerpt(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


# ---- command line -------------------------------------------------------------------------------

USAGE = "usage: python -m shared.script FILE   (FILE may be - for standard input)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        _write_line(sys.stdout, USAGE)
        return 0
    if len(args) != 1:
        _write_line(sys.stderr, USAGE)
        return 2
    try:
        script = parse_script(_read_source(args[0]))
    except ScriptError as error:
        _write_line(sys.stderr, f"error: {error}")
        return 2
    _write_line(sys.stdout, json.dumps(to_json(script), ensure_ascii=False, indent=2))
    return 0


def _read_source(source: str) -> str:
    """Reads FILE or standard input as UTF-8 text; a ScriptError says why it cannot."""
    name = "standard input" if source == "-" else source
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as error:
        raise ScriptError(f"cannot read {name}: {error.strerror or error}") from None
    if b"\x00" in data:
        raise ScriptError(f"{name} contains NUL bytes (UTF-16 or binary?) — save it as UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ScriptError(f"{name} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                          f"{error.start}) — save it as UTF-8") from None


def _write_line(stream: TextIO, text: str) -> None:
    # UTF-8 bytes whatever the locale, so Chinese names never fail to print.
    binary = getattr(stream, "buffer", None)
    if binary is None:
        stream.write(text + "\n")
        stream.flush()
    else:
        stream.flush()
        binary.write((text + "\n").encode("utf-8"))
        binary.flush()


if __name__ == "__main__":
    sys.exit(main())
