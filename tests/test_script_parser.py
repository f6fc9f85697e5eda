"""The dialogue-script parser: every format users paste, the heuristics, the errors and the CLI."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from shared.script import Script, ScriptError, ScriptLine, parse_script, to_json

REPO_ROOT = Path(__file__).resolve().parents[1]


def turns(script: Script) -> list[tuple[int, str]]:
    return [(line.speaker, line.text) for line in script.lines]


# ---- numbered labels ----------------------------------------------------------------------------

def test_inline_markers_split_one_line_into_turns():
    script = parse_script("(s1) Hi. (s2) Hello!")
    assert script == Script(["Speaker 1", "Speaker 2"],
                            [ScriptLine(0, "Hi."), ScriptLine(1, "Hello!")])


def test_markers_at_line_starts_give_one_turn_per_line():
    script = parse_script("(s1) How are you?\n(s2) Fine, thanks.\n(s1) Good.")
    assert script.speakers == ["Speaker 1", "Speaker 2"]
    assert turns(script) == [(0, "How are you?"), (1, "Fine, thanks."), (0, "Good.")]


def test_numbered_labels_map_to_index_n_minus_1():
    script = parse_script("(s2) a (s1) b")
    assert script.speakers == ["Speaker 1", "Speaker 2"]
    assert turns(script) == [(1, "a"), (0, "b")]


def test_unused_speaker_number_still_takes_its_slot():
    script = parse_script("(s1) first\n(s3) third")
    assert script.speakers == ["Speaker 1", "Speaker 2", "Speaker 3"]
    assert turns(script) == [(0, "first"), (2, "third")]


def test_marker_accepts_capital_s_full_width_brackets_and_a_trailing_colon():
    script = parse_script("（s1）：你好 (S2): hi ( s3 ) yo")
    assert script.speakers == ["Speaker 1", "Speaker 2", "Speaker 3"]
    assert turns(script) == [(0, "你好"), (1, "hi"), (2, "yo")]


def test_role_labels_keep_their_chinese_names():
    script = parse_script("角色1：你好\n角色2：再见")
    assert script.speakers == ["角色1", "角色2"]
    assert turns(script) == [(0, "你好"), (1, "再见")]


def test_unused_role_number_is_named_like_the_other_role_labels():
    assert parse_script("角色1：你好\n角色3：再见").speakers == ["角色1", "角色2", "角色3"]


def test_speaker_n_and_sn_labels_are_numbered():
    script = parse_script("Speaker 2: hi\nS1: hello\nspeaker3: hey\ns2: again")
    assert script.speakers == ["Speaker 1", "Speaker 2", "Speaker 3"]
    assert turns(script) == [(1, "hi"), (0, "hello"), (2, "hey"), (1, "again")]


def test_numbered_labels_take_their_slots_and_named_speakers_follow():
    script = parse_script("(s2) a\nAlice: b\n(s1) c\nBob: d")
    assert script.speakers == ["Speaker 1", "Speaker 2", "Alice", "Bob"]
    assert turns(script) == [(1, "a"), (2, "b"), (0, "c"), (3, "d")]


def test_diarization_ids_with_underscore_are_names_not_numbers():
    script = parse_script("SPEAKER_00: hi\nSPEAKER_01: hello")
    assert script.speakers == ["SPEAKER_00", "SPEAKER_01"]
    assert turns(script) == [(0, "hi"), (1, "hello")]


# ---- named labels -------------------------------------------------------------------------------

def test_letter_labels_become_speakers_in_order_of_first_appearance():
    script = parse_script("B: hi\nA: hello\nB: bye")
    assert script.speakers == ["B", "A"]
    assert turns(script) == [(0, "hi"), (1, "hello"), (0, "bye")]


def test_named_speakers_with_ascii_and_full_width_colons():
    script = parse_script("Alice: Hello.\n小明：你好！\n小红:早上好")
    assert script.speakers == ["Alice", "小明", "小红"]
    assert turns(script) == [(0, "Hello."), (1, "你好！"), (2, "早上好")]


def test_names_match_case_insensitively_and_keep_the_first_spelling():
    script = parse_script("Alice: one\nALICE: two\nbob: three\nBob: four")
    assert script.speakers == ["Alice", "bob"]
    assert turns(script) == [(0, "one"), (0, "two"), (1, "three"), (1, "four")]


def test_any_number_of_speakers():
    names = ["Ann", "Ben", "Cat", "Dan", "Eve", "Fay", "Gus"]
    script = parse_script("\n".join(f"{name}: line {i}" for i, name in enumerate(names)))
    assert script.speakers == names
    assert turns(script) == [(i, f"line {i}") for i in range(len(names))]


def test_multi_word_names_and_short_titles_are_labels():
    script = parse_script("Dr. Lee: Take a seat.\nMary Jane Watson: Thanks.\nJean-Luc: Engage.")
    assert script.speakers == ["Dr. Lee", "Mary Jane Watson", "Jean-Luc"]
    assert turns(script) == [(0, "Take a seat."), (1, "Thanks."), (2, "Engage.")]


def test_bracketed_names_are_labels():
    script = parse_script("[Alice] Hi.\n[Bob]: Hello.\n【小明】你好")
    assert script.speakers == ["Alice", "Bob", "小明"]
    assert turns(script) == [(0, "Hi."), (1, "Hello."), (2, "你好")]


def test_bracketed_numbered_label_is_numbered():
    script = parse_script("[Speaker 2] hi\n[s1] hello")
    assert script.speakers == ["Speaker 1", "Speaker 2"]
    assert turns(script) == [(1, "hi"), (0, "hello")]


def test_lowercase_bracketed_word_is_a_stage_direction_not_a_speaker():
    script = parse_script("Alice: That was close.\n[laughs] Too close.\nBob: Agreed.")
    assert script.speakers == ["Alice", "Bob"]
    assert turns(script) == [(0, "That was close. [laughs] Too close."), (1, "Agreed.")]


def test_markdown_bold_and_italic_names_are_labels():
    script = parse_script("**Alice:** Hi.\n**Bob**: Hello.\n*Carol:* Hey.\n__Dan:__ Yo.")
    assert script.speakers == ["Alice", "Bob", "Carol", "Dan"]
    assert turns(script) == [(0, "Hi."), (1, "Hello."), (2, "Hey."), (3, "Yo.")]


def test_same_speaker_in_plain_and_bold_form_is_one_speaker():
    script = parse_script("**Alice:** Hi.\nAlice: Again.")
    assert script.speakers == ["Alice"]
    assert turns(script) == [(0, "Hi."), (0, "Again.")]


# ---- colons that are not labels -----------------------------------------------------------------

def test_colon_inside_the_text_stays_in_the_text():
    script = parse_script("A: at 10:30\nB: see https://example.com: ok")
    assert turns(script) == [(0, "at 10:30"), (1, "see https://example.com: ok")]


def test_time_and_url_at_a_line_start_continue_the_previous_turn():
    script = parse_script("A: We meet\n10:30 sharp.\nB: Details at\nhttps://example.com/x")
    assert script.speakers == ["A", "B"]
    assert turns(script) == [(0, "We meet 10:30 sharp."), (1, "Details at https://example.com/x")]


def test_only_the_first_colon_can_end_a_label():
    script = parse_script("A: hi\nB: hello\nNote: at 10:30 we go")
    assert script.speakers == ["A", "B", "Note"]
    assert turns(script)[2] == (2, "at 10:30 we go")


def test_prose_before_a_colon_is_not_a_label():
    script = parse_script(
        "A: Listen.\n"
        "Well, you know: it works.\n"              # sentence punctuation
        "So here is the whole thing: we go.\n"     # more than four words
        "Yes. Then: fine.\n"                       # a sentence stop, not a title
        "B: OK.")
    assert script.speakers == ["A", "B"]
    assert turns(script) == [
        (0, "Listen. Well, you know: it works. So here is the whole thing: we go. Yes. Then: fine."),
        (1, "OK."),
    ]


def test_name_longer_than_thirty_characters_is_not_a_label():
    long_name = "Bartholomew Maximilian Featherstonehaugh"
    assert len(long_name) > 30
    script = parse_script(f"A: hi\n{long_name}: hello\nB: yo")
    assert turns(script) == [(0, f"hi {long_name}: hello"), (1, "yo")]


# ---- free format --------------------------------------------------------------------------------

def test_free_format_alternates_two_speakers_starting_with_the_first():
    script = parse_script("Hi there.\nHello!\nHow are you?\nFine.")
    assert script == Script(["Speaker 1", "Speaker 2"], [
        ScriptLine(0, "Hi there."), ScriptLine(1, "Hello!"),
        ScriptLine(0, "How are you?"), ScriptLine(1, "Fine."),
    ])


def test_free_format_single_line_has_a_single_speaker():
    assert parse_script("Just me talking.") == Script(["Speaker 1"], [ScriptLine(0, "Just me talking.")])


def test_one_prose_colon_line_in_free_format_stays_text():
    script = parse_script("Are we ready?\nNote: at 10:30 we go.\nGreat.")
    assert script.speakers == ["Speaker 1", "Speaker 2"]
    assert turns(script) == [(0, "Are we ready?"), (1, "Note: at 10:30 we go."), (0, "Great.")]


def test_a_single_line_with_a_label_is_labelled():
    assert parse_script("Alice: Hello there.") == Script(["Alice"], [ScriptLine(0, "Hello there.")])


def test_one_numbered_marker_makes_the_whole_script_labelled():
    script = parse_script("(s2) Hello.\nsecond sentence.")
    assert script.speakers == ["Speaker 1", "Speaker 2"]
    assert turns(script) == [(1, "Hello. second sentence.")]


# ---- whitespace, blank lines, continuation ------------------------------------------------------

def test_crlf_blank_lines_and_byte_order_mark_are_ignored():
    script = parse_script("\ufeffA: hi\r\n\r\n   \r\nB: yo\r\n\r\n")
    assert script == Script(["A", "B"], [ScriptLine(0, "hi"), ScriptLine(1, "yo")])


def test_whitespace_is_trimmed_and_collapsed_within_a_line():
    script = parse_script("  A:   hi \t  there\u3000friend  \n\tB :  yo")
    assert turns(script) == [(0, "hi there friend"), (1, "yo")]


def test_continuation_lines_join_the_previous_turn_with_a_space():
    script = parse_script("A: This is a long\nsentence that goes on\nand on.\nB: Indeed.")
    assert turns(script) == [(0, "This is a long sentence that goes on and on."), (1, "Indeed.")]


def test_cjk_continuation_lines_join_without_a_space():
    script = parse_script("小明：今天天气很好，\n我们去公园吧。\n小红：好啊\nOK!")
    assert turns(script) == [(0, "今天天气很好，我们去公园吧。"), (1, "好啊OK!")]


def test_text_before_an_inline_marker_continues_the_previous_turn():
    script = parse_script("(s1) Hi\nthere. (s2) Hello!")
    assert turns(script) == [(0, "Hi there."), (1, "Hello!")]


def test_repeated_label_starts_a_new_turn():
    assert turns(parse_script("A: one\nA: two")) == [(0, "one"), (0, "two")]


def test_label_alone_on_a_line_takes_the_following_lines():
    script = parse_script("Alice:\nHello there,\nfriend.\nBob:\nHi.")
    assert script.speakers == ["Alice", "Bob"]
    assert turns(script) == [(0, "Hello there, friend."), (1, "Hi.")]


def test_label_that_never_gets_text_is_dropped_with_its_speaker():
    script = parse_script("Alice:\nBob: Hi.\nCarol:")
    assert script == Script(["Bob"], [ScriptLine(0, "Hi.")])


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   ", "\n\r\n\t\n", "\ufeff"])
def test_empty_script_is_an_error(text):
    with pytest.raises(ScriptError, match=r"^the script is empty$"):
        parse_script(text)


@pytest.mark.parametrize("text, message", [
    ("A: hi\n\n(s0) x", "line 3: (s0) — speaker numbers start at 1"),
    ("角色0：你好", "line 1: 角色0 — speaker numbers start at 1"),
    ("Speaker 0: hi", "line 1: Speaker 0 — speaker numbers start at 1"),
    ("S1: hi\nS0: yo", "line 2: S0 — speaker numbers start at 1"),
    ("(s101) hi", "line 1: (s101) — speaker numbers go up to 100"),
    ("(s99999999999) hi", "line 1: (s99999999999) — speaker numbers go up to 100"),
])
def test_speaker_number_out_of_range_is_an_error_naming_the_line(text, message):
    with pytest.raises(ScriptError) as raised:
        parse_script(text)
    assert str(raised.value) == message


def test_text_before_the_first_label_is_an_error():
    with pytest.raises(ScriptError) as raised:
        parse_script("My Podcast, episode three\nA: hi\nB: yo")
    assert raised.value.line == 1
    assert str(raised.value) == ('line 1: "My Podcast, episode three" comes before the first speaker '
                                 'label (line 2) — give it a label such as "A:" or delete it')


def test_long_text_before_the_first_label_is_shortened_in_the_message():
    with pytest.raises(ScriptError) as raised:
        parse_script("x" * 100 + "\n(s1) hi")
    assert str(raised.value).startswith('line 1: "' + "x" * 39 + '…" comes before')


@pytest.mark.parametrize("text", ["A:\nB:", "(s1)(s2)", "**Alice:**\n[Bob]"])
def test_labels_without_any_text_are_an_error(text):
    with pytest.raises(ScriptError, match=r"^the script has speaker labels but no text to speak$"):
        parse_script(text)


def test_script_error_is_a_value_error_without_a_line_when_not_about_one():
    error = ScriptError("the script is empty")
    assert isinstance(error, ValueError)
    assert error.line is None


# Pieces that exercise every label form, glued together at random.
PASTE_PIECES = st.sampled_from([
    "(s1)", "(s2) ", "（s3）：", "(s0)", "A:", "A: ", "小明：", "角色2：", "Speaker 1:", "[Bob]", "[laughs]",
    "**Alice:**", "Note: ", "10:30", "https://x", "hi", "你好", "。", " ", "\t", "\n", "\r\n", "\u3000",
    "\ufeff", "Dr. ", "x" * 31, ":", "：", "[", "**",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(PASTE_PIECES, max_size=12).map("".join))
def test_any_paste_gives_a_consistent_script_or_a_script_error(text):
    try:
        script = parse_script(text)
    except ScriptError as error:
        assert "\n" not in str(error)
        return
    assert script.lines
    for line in script.lines:
        assert 0 <= line.speaker < len(script.speakers)
        assert line.text == line.text.strip() and "  " not in line.text and "\n" not in line.text


# ---- data types and JSON ------------------------------------------------------------------------

def test_script_and_lines_are_frozen():
    script = parse_script("A: hi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        script.speakers = []
    with pytest.raises(dataclasses.FrozenInstanceError):
        script.lines[0].text = "changed"


def test_to_json_lists_speakers_and_lines():
    assert to_json(parse_script("小明：你好\nBob: hi")) == {
        "speakers": ["小明", "Bob"],
        "lines": [{"speaker": 0, "text": "你好"}, {"speaker": 1, "text": "hi"}],
    }


# ---- command line -------------------------------------------------------------------------------

def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shared.script", *args], cwd=REPO_ROOT,
                          input=stdin, capture_output=True, timeout=60)


def test_cli_prints_the_script_as_json_with_unescaped_text(tmp_path):
    path = tmp_path / "dialogue.txt"
    path.write_text("小明：你好！\r\n(s2) Hi.\r\n", encoding="utf-8")
    result = run_cli(str(path))
    assert result.returncode == 0
    assert result.stderr == b""
    assert "你好" in result.stdout.decode("utf-8")
    assert json.loads(result.stdout) == {
        "speakers": ["Speaker 1", "Speaker 2", "小明"],
        "lines": [{"speaker": 2, "text": "你好！"}, {"speaker": 1, "text": "Hi."}],
    }


def test_cli_reads_standard_input_for_dash():
    result = run_cli("-", stdin="Hi.\nHello.".encode("utf-8"))
    assert result.returncode == 0
    assert json.loads(result.stdout) == {
        "speakers": ["Speaker 1", "Speaker 2"],
        "lines": [{"speaker": 0, "text": "Hi."}, {"speaker": 1, "text": "Hello."}],
    }


def test_cli_accepts_a_utf8_byte_order_mark(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfA: hi")
    result = run_cli(str(path))
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"speakers": ["A"], "lines": [{"speaker": 0, "text": "hi"}]}


def assert_fails_with_one_line(result: subprocess.CompletedProcess, expected: str) -> None:
    stderr = result.stderr.decode("utf-8")
    assert result.returncode == 2
    assert result.stdout == b""
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert stderr.rstrip("\n") == expected


def test_cli_empty_file_exits_2_with_reason(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"\n  \n")
    assert_fails_with_one_line(run_cli(str(path)), "error: the script is empty")


def test_cli_script_error_exits_2_with_the_line(tmp_path):
    path = tmp_path / "zero.txt"
    path.write_text("(s1) hi\n(s0) yo", encoding="utf-8")
    assert_fails_with_one_line(run_cli(str(path)), "error: line 2: (s0) — speaker numbers start at 1")


def test_cli_labels_without_text_exit_2():
    assert_fails_with_one_line(run_cli("-", stdin=b"A:\nB:"),
                               "error: the script has speaker labels but no text to speak")


def test_cli_missing_file_exits_2(tmp_path):
    missing = tmp_path / "nope.txt"
    assert_fails_with_one_line(run_cli(str(missing)), f"error: cannot read {missing}: No such file or directory")


def test_cli_directory_exits_2(tmp_path):
    result = run_cli(str(tmp_path))
    assert_fails_with_one_line(result, f"error: cannot read {tmp_path}: Is a directory")


def test_cli_non_utf8_file_exits_2(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("A: café".encode("latin-1"))
    assert_fails_with_one_line(run_cli(str(path)),
                               f"error: {path} is not UTF-8 text (byte 0xe9 at offset 6) — save it as UTF-8")


def test_cli_utf16_input_exits_2():
    assert_fails_with_one_line(
        run_cli("-", stdin="A: hi".encode("utf-16-le")),
        "error: standard input contains NUL bytes (UTF-16 or binary?) — save it as UTF-8 text")


@pytest.mark.parametrize("args", [(), ("a.txt", "b.txt")])
def test_cli_wrong_arguments_exit_2_with_usage(args):
    assert_fails_with_one_line(run_cli(*args),
                               "usage: python -m shared.script FILE   (FILE may be - for standard input)")
