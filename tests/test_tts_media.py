"""Decoding user audio, resampling and loudness (daemon/media/audio_io.py, loudness.py)."""
import io
import math

import numpy as np
import pytest
import soundfile

from daemon.media.audio_io import AudioDecodeError, decode_audio, resample, to_mono, wav_bytes
from daemon.media.loudness import integrated_loudness, normalize_loudness, true_peak


def encoded(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")])
def test_wav_flac_and_ogg_decode_to_float_mono(fmt, subtype):
    stereo = np.stack([sine(440, 0.5, 22050), sine(440, 0.5, 22050)], axis=1)
    samples, rate = decode_audio(encoded(stereo, 22050, fmt, subtype))
    assert rate == 22050 and samples.dtype == np.float32 and samples.ndim == 1
    assert samples.shape[0] == 11025
    assert np.max(np.abs(samples)) == pytest.approx(0.5, abs=0.03)


def test_downmix_averages_the_channels():
    np.testing.assert_array_equal(to_mono(np.array([[1.0, 0.0], [0.5, 0.5]])), [0.5, 0.5])


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt garbage", "cannot be decoded"),
    (b"\x89PNG\r\n\x1a\n not audio at all", "cannot be decoded"),
])
def test_unusable_audio_says_what_to_attach(data, message):
    with pytest.raises(AudioDecodeError, match=f"{message}.*WAV, FLAC or OGG"):
        decode_audio(data)


def test_audio_with_no_samples_is_refused():
    with pytest.raises(AudioDecodeError, match="no samples"):
        decode_audio(encoded(np.zeros(0, np.float32), 16000, "WAV", "PCM_16"))


def test_nan_samples_are_refused():
    bad = np.zeros(100, np.float32)
    bad[5] = np.nan
    with pytest.raises(AudioDecodeError, match="NaN"):
        decode_audio(encoded(bad, 16000, "WAV", "FLOAT"))


def test_resampling_keeps_whole_ratios_exact_and_the_tone_in_place():
    tone = sine(440, 1.0, 24000)
    down = resample(tone, 24000, 16000)
    assert down.shape == (16000,) and down.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(down))
    assert np.argmax(spectrum) == 440                       # 1 Hz bins over 1 s
    assert resample(tone[:10], 24000, 16000).shape == (7,)  # ceil(10 * 2 / 3)
    assert resample(sine(440, 1.0, 22050), 22050, 24000).shape == (24000,)


def test_resampling_removes_what_the_new_rate_cannot_hold():
    # 10 kHz is above 16 kHz's Nyquist limit (8 kHz): filtered out, not folded down to 6 kHz.
    high = resample(sine(10000, 1.0, 24000, amplitude=0.5), 24000, 16000)
    assert np.sqrt(np.mean(high[1000:-1000] ** 2)) < 0.5 / np.sqrt(2) * 10 ** (-50 / 20)


def test_loudness_of_a_full_scale_997hz_sine_is_about_minus_3_lufs():
    # BS.1770: a 0 dBFS 997 Hz sine in one channel reads -3.01 LUFS.
    assert integrated_loudness(sine(997, 2.0, 48000, 1.0), 48000) == pytest.approx(-3.01, abs=0.05)


def test_silence_and_short_clips_are_measurable():
    assert integrated_loudness(np.zeros(48000, np.float32), 48000) == -math.inf
    short = integrated_loudness(sine(997, 0.2, 48000, 1.0), 48000)    # shorter than a 400 ms block
    assert short == pytest.approx(-3.0, abs=0.3)


def test_normalize_reaches_the_target_when_the_peak_allows():
    out, gain_db = normalize_loudness(sine(440, 2.0, 24000, 0.05), 24000, -16.0)
    assert integrated_loudness(out, 24000) == pytest.approx(-16.0, abs=0.01)
    assert gain_db > 0


def test_normalize_stops_at_the_true_peak_ceiling():
    clicks = np.zeros(48000, np.float32)
    clicks[::4800] = 0.5
    out, _ = normalize_loudness(clicks, 24000, -10.0, peak_ceiling_dbtp=-1.0)
    assert 20 * math.log10(true_peak(out)) == pytest.approx(-1.0, abs=1e-4)


def test_true_peak_sees_peaks_between_samples():
    # A sine at a quarter of the rate, sampled at 45°: every sample is 0.707, the wave is 1.0.
    n = np.arange(400)
    samples = np.sin(np.pi / 2 * n + np.pi / 4).astype(np.float32)
    assert np.max(np.abs(samples)) == pytest.approx(0.7071, abs=1e-3)
    assert true_peak(samples) == pytest.approx(1.0, abs=0.02)


def test_wav_bytes_round_trip():
    data = wav_bytes(sine(440, 0.1, 16000), 16000)
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert rate == 16000 and samples.shape == (1600,)
