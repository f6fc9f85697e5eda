"""The voice catalog (shared/voices.py): ids, languages, genders, fallbacks."""
import pytest

from shared.voices import (DEFAULT_VOICES, ESPEAK, KNOWN_VOICES, KOKORO, VoiceError,
                           canonical_lang, closest_installed, default_voice, voice_info)

ALL_ESPEAK = {v for v, info in KNOWN_VOICES.items() if info.backend == ESPEAK}


def test_catalog_holds_the_54_kokoro_v1_voices_and_two_espeak_voices_per_language():
    kokoro = [info for info in KNOWN_VOICES.values() if info.backend == KOKORO]
    assert len(kokoro) == 54
    assert len(ALL_ESPEAK) == 18
    assert {"espeak:en-us", "espeak:en-us+f3", "espeak:cmn", "espeak:cmn+f3"} <= ALL_ESPEAK


@pytest.mark.parametrize("voice_id, lang, gender", [
    ("af_heart", "en-us", "female"),
    ("am_adam", "en-us", "male"),
    ("bm_george", "en-gb", "male"),
    ("zf_xiaoxiao", "zh", "female"),
    ("zm_yunxi", "zh", "male"),
    ("jf_alpha", "ja", "female"),
    ("ff_siwis", "fr", "female"),
    ("pm_alex", "pt-br", "male"),
    ("espeak:cmn", "zh", "male"),
    ("espeak:en-gb+f3", "en-gb", "female"),
])
def test_language_and_gender_come_from_the_id(voice_id, lang, gender):
    info = voice_info(voice_id)
    assert (info.lang, info.gender) == (lang, gender)
    assert info.label.startswith(gender)
    assert info.installed is False


def test_unknown_voice_is_an_error_that_says_where_the_valid_ids_are():
    with pytest.raises(VoiceError, match="unknown voice 'af_nobody'.*voice list"):
        voice_info("af_nobody")


def test_default_voices_are_catalog_voices_of_their_language_and_gender():
    for lang, by_gender in DEFAULT_VOICES.items():
        for gender, voice_id in by_gender.items():
            assert (KNOWN_VOICES[voice_id].lang, KNOWN_VOICES[voice_id].gender) == (lang, gender)
    assert default_voice("en", "male") == "am_michael"
    assert default_voice("cmn") == "zf_xiaoxiao"


def test_language_aliases_are_canonicalized_and_unknown_languages_rejected():
    assert [canonical_lang(x) for x in ("en", "EN-US", "en_GB", "cmn", "zh-CN")] == \
        ["en-us", "en-us", "en-gb", "zh", "zh"]
    with pytest.raises(VoiceError, match="'tlh' is not supported"):
        canonical_lang("tlh")


def test_an_installed_voice_is_used_as_is():
    info, warning = closest_installed("af_bella", {"af_bella", "af_heart"})
    assert (info.id, info.installed, warning) == ("af_bella", True, None)


def test_missing_kokoro_voice_prefers_the_default_kokoro_voice_of_same_language_and_gender():
    info, warning = closest_installed("af_bella", {"af_alloy", "af_heart", "am_adam", *ALL_ESPEAK})
    assert info.id == "af_heart"
    assert warning == "voice af_bella is not installed — using af_heart (female, warm (grade A)) instead"


@pytest.mark.parametrize("wanted, used", [
    ("af_bella", "espeak:en-us+f3"),
    ("am_adam", "espeak:en-us"),
    ("bf_emma", "espeak:en-gb+f3"),
    ("zf_xiaoxiao", "espeak:cmn+f3"),
    ("zm_yunxi", "espeak:cmn"),
    ("jf_alpha", "espeak:ja+f3"),
])
def test_without_kokoro_a_voice_falls_back_to_espeak_of_same_language_and_gender(wanted, used):
    info, warning = closest_installed(wanted, ALL_ESPEAK)
    assert info.id == used
    assert warning.startswith(f"voice {wanted} is not installed — using {used}")


def test_fallback_crosses_to_the_other_variety_of_a_language_only_when_needed():
    info, _ = closest_installed("bm_george", {"espeak:en-us", "espeak:en-us+f3", "espeak:cmn"})
    assert info.id == "espeak:en-us"


def test_no_installed_voice_for_the_language_is_an_error_naming_the_fix():
    with pytest.raises(VoiceError, match="speaks Mandarin Chinese: install espeak-ng"):
        closest_installed("zf_xiaobei", {"af_heart", "espeak:en-us"})
