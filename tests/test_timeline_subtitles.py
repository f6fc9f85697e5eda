"""SRT / WebVTT from line timings, and the soundtrack export folder."""
import numpy as np
import soundfile

from daemon.tts.subtitles import MAX_ROW_WIDTH, make_cues, to_srt, to_vtt, width, wrap
from daemon.tts.timeline import LineTiming, Soundtrack, export_soundtrack

TWO_LINES = [LineTiming(0, 0, 0.0, 1.5, "Hello there."),
             LineTiming(1, 1, 1.8, 3.0405, "Hi! How are you?")]


def test_srt_numbers_cues_and_uses_comma_milliseconds():
    assert to_srt(TWO_LINES) == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n"
        "\n"
        "2\n00:00:01,800 --> 00:00:03,040\nHi! How are you?\n")


def test_vtt_has_its_header_dot_milliseconds_and_escapes_markup():
    timings = [*TWO_LINES, LineTiming(2, 0, 3661.25, 3662.0, "Fish & <chips>")]
    assert to_vtt(timings) == (
        "WEBVTT\n"
        "\n"
        "00:00:00.000 --> 00:00:01.500\nHello there.\n"
        "\n"
        "00:00:01.800 --> 00:00:03.040\nHi! How are you?\n"
        "\n"
        "01:01:01.250 --> 01:01:02.000\nFish &amp; &lt;chips&gt;\n")


def test_lines_without_text_make_no_cue():
    timings = [LineTiming(0, 0, 0.0, 1.0, ""), LineTiming(1, 1, 1.0, 2.0, "Spoken.")]
    assert to_srt(timings) == "1\n00:00:01,000 --> 00:00:02,000\nSpoken.\n"


def test_speaker_names_prefix_each_line():
    assert make_cues(TWO_LINES, names=["Ada", "Bo"])[1].rows == ("Bo: Hi! How are you?",)


def test_long_line_wraps_at_42_columns_two_rows_per_cue_sharing_the_time_span():
    text = ("This is a rather long line of dialogue that will certainly not fit on the two "
            "rows of a single subtitle cue, so it has to be split.")
    cues = make_cues([LineTiming(0, 0, 10.0, 20.0, text)])
    assert len(cues) == 2
    assert all(1 <= len(cue.rows) <= 2 for cue in cues)
    assert all(len(row) <= MAX_ROW_WIDTH for cue in cues for row in cue.rows)
    assert " ".join(row for cue in cues for row in cue.rows) == text
    assert (cues[0].start, cues[-1].end) == (10.0, 20.0)
    assert cues[0].end == cues[1].start
    chars = [sum(len(r) for r in cue.rows) for cue in cues]
    assert cues[0].end - 10.0 == 10.0 * chars[0] / sum(chars)


def test_chinese_wraps_at_21_characters_because_they_are_double_width():
    text = "我们今天下午一起去公园散步，然后再去喝咖啡聊天，好不好呀？"   # 29 characters
    rows = wrap(text, MAX_ROW_WIDTH)
    assert [len(r) for r in rows] == [21, 8]
    assert width(rows[0]) == 42


def test_a_word_longer_than_a_row_is_broken():
    assert wrap("x" * 50 + " y", 42) == ["x" * 42, "x" * 8 + " y"]


def test_export_writes_the_mix_speaker_tracks_and_both_subtitle_files(tmp_path):
    soundtrack = Soundtrack(mixed=np.full(24000 * 3, 0.1, np.float32),
                            speakers=[np.full(16000 * 3, 0.1, np.float32),
                                      np.zeros(16000 * 3, np.float32)],
                            timings=TWO_LINES, duration=3.0)
    files = export_soundtrack(soundtrack, tmp_path / "out", names=["Ada", "Bo"])
    assert [p.name for p in files.speakers] == ["speaker_1.wav", "speaker_2.wav"]
    mixed, rate = soundfile.read(files.mixed)
    assert (rate, mixed.shape, soundfile.info(files.mixed).subtype) == (24000, (72000,), "PCM_16")
    assert soundfile.info(files.speakers[0]).samplerate == 16000
    assert files.srt.read_text(encoding="utf-8") == to_srt(TWO_LINES, ["Ada", "Bo"])
    assert files.vtt.read_text(encoding="utf-8").startswith("WEBVTT\n\n00:00:00.000 --> ")
