"""Real espeak-ng synthesis (the Debian espeak-ng program) in English and Mandarin."""
import shutil

import numpy as np
import pytest

from daemon.tts.espeak import EspeakBackend, _parse_languages
from daemon.tts.speech import SpeechError

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng not installed (apt-get install -y espeak-ng)")

ENGLISH = "The quick brown fox jumps over the lazy dog near the river bank."   # 13 words
MANDARIN = "你好，我们今天去公园散步吧。"                                           # 12 syllables


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


@pytest.fixture(scope="module")
def espeak():
    return EspeakBackend()


def test_reports_its_version_and_the_catalog_voices_it_can_speak(espeak):
    state = espeak.state()
    assert state.available and state.version.startswith("1.")
    assert {"espeak:en-us", "espeak:en-us+f3", "espeak:cmn", "espeak:cmn+f3"} <= \
        espeak.installed_voices()


def test_english_is_22050_hz_speech_of_plausible_length(espeak):
    samples, rate = espeak.synthesize(ENGLISH, "espeak:en-us", 1.0)
    assert rate == 22050
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert rms(samples) > 0.02
    # 13 words at espeak's 175 words per minute ≈ 4.5 s; allow for pauses and clause rhythm.
    assert 2.5 < samples.shape[0] / rate < 7.0


def test_mandarin_is_speech_of_plausible_length(espeak):
    samples, rate = espeak.synthesize(MANDARIN, "espeak:cmn", 1.0)
    assert rate == 22050
    assert rms(samples) > 0.02
    # 12 syllables and two pauses: 0.15–0.6 s per syllable.
    assert 1.8 < samples.shape[0] / rate < 7.2


def test_double_speed_takes_about_half_the_time(espeak):
    normal, rate = espeak.synthesize(ENGLISH, "espeak:en-us", 1.0)
    fast, _ = espeak.synthesize(ENGLISH, "espeak:en-us", 2.0)
    assert 0.35 < fast.shape[0] / normal.shape[0] < 0.65


def test_female_variant_sounds_different(espeak):
    male, _ = espeak.synthesize("Hello there.", "espeak:en-us", 1.0)
    female, _ = espeak.synthesize("Hello there.", "espeak:en-us+f3", 1.0)
    n = min(male.shape[0], female.shape[0])
    assert not np.allclose(male[:n], female[:n], atol=1e-3)


def test_text_starting_with_a_dash_is_spoken_not_parsed_as_an_option(espeak):
    samples, _ = espeak.synthesize("-v is not an option here", "espeak:en-us", 1.0)
    assert rms(samples) > 0.02


def test_missing_program_is_unavailable_with_the_install_command():
    backend = EspeakBackend(program="espeak-ng-does-not-exist")
    state = backend.state()
    assert not state.available
    assert "apt-get install -y espeak-ng" in state.detail
    assert backend.installed_voices() == set()
    with pytest.raises(SpeechError, match="apt-get install -y espeak-ng"):
        backend.synthesize("Hello", "espeak:en-us", 1.0)


def test_voice_listing_is_read_by_its_language_column():
    listing = ("Pty Language       Age/Gender VoiceName          File                 Other Languages\n"
               " 5  cmn             --/M      Chinese_(Mandarin) sit/cmn              (zh-cmn 5)(zh 5)\n"
               " 2  en-us           --/M      English_(America)  gmw/en-US            (en 3)\n")
    assert _parse_languages(listing) == {"cmn", "en-us"}
