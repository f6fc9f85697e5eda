"""The voice catalog: every voice id the studio can offer, the engine that speaks it, its language.

Pure data and lookups (no torch), shared by the studio (voice pickers) and the daemon (synthesis).
Two engines:
- Kokoro-82M v1.0 (neural, weights in weights/Kokoro-82M/voices/<id>.pt). Its ids encode language
  and gender in the first two letters: "af_heart" = a (American English) + f (female).
- espeak-ng (formant synthesis, always installed by the setup script). Ids are "espeak:<espeak
  voice>[+variant]"; the plain espeak voices are male, the "+f3" variant is the female one.

A voice that is known but not installed falls back to the closest installed voice of the same
language (same gender first) with a warning; only an unknown id is an error.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

KOKORO = "kokoro"
ESPEAK = "espeak"
ESPEAK_PREFIX = "espeak:"
FEMALE = "female"
MALE = "male"

# Languages by the tag the studio stores in Person.lang.
LANG_NAMES: dict[str, str] = {
    "en-us": "American English",
    "en-gb": "British English",
    "zh": "Mandarin Chinese",
    "ja": "Japanese",
    "es": "Spanish",
    "fr": "French",
    "hi": "Hindi",
    "it": "Italian",
    "pt-br": "Brazilian Portuguese",
}

# Other spellings people (and imported MultiTalk projects) use for the same languages.
LANG_ALIASES: dict[str, str] = {
    "en": "en-us", "english": "en-us", "en_us": "en-us", "en-uk": "en-gb", "en_gb": "en-gb",
    "cmn": "zh", "zh-cn": "zh", "zh_cn": "zh", "zh-hans": "zh", "mandarin": "zh", "chinese": "zh",
    "jp": "ja", "fr-fr": "fr", "pt": "pt-br", "pt_br": "pt-br",
}

# Kokoro v1.0: the first letter of a voice id is its language (hexgrad/Kokoro-82M VOICES.md).
KOKORO_LANG_LETTERS: dict[str, str] = {
    "a": "en-us", "b": "en-gb", "z": "zh", "j": "ja", "e": "es", "f": "fr", "h": "hi",
    "i": "it", "p": "pt-br",
}
KOKORO_GENDER_LETTERS: dict[str, str] = {"f": FEMALE, "m": MALE}

# The 54 voices of Kokoro-82M v1.0 with a short description; the letter grade is the one
# VOICES.md gives for the English voices (A best .. F), a hint of how natural each one sounds.
_KOKORO_V1_0: tuple[tuple[str, str], ...] = (
    ("af_heart", "warm (grade A)"), ("af_alloy", "grade C"), ("af_aoede", "grade C+"),
    ("af_bella", "lively (grade A-)"), ("af_jessica", "grade D"), ("af_kore", "grade C+"),
    ("af_nicole", "soft, close-mic (grade B-)"), ("af_nova", "grade C"), ("af_river", "grade D"),
    ("af_sarah", "grade C+"), ("af_sky", "grade C-"),
    ("am_adam", "grade F+"), ("am_echo", "grade D"), ("am_eric", "grade D"),
    ("am_fenrir", "grade C+"), ("am_liam", "grade D"), ("am_michael", "grade C+"),
    ("am_onyx", "grade D"), ("am_puck", "grade C+"), ("am_santa", "grade D-"),
    ("bf_alice", "grade D"), ("bf_emma", "grade B-"), ("bf_isabella", "grade C"),
    ("bf_lily", "grade D"), ("bm_daniel", "grade D"), ("bm_fable", "grade C"),
    ("bm_george", "grade C"), ("bm_lewis", "grade D+"),
    ("jf_alpha", ""), ("jf_gongitsune", ""), ("jf_nezumi", ""), ("jf_tebukuro", ""),
    ("jm_kumo", ""),
    ("zf_xiaobei", ""), ("zf_xiaoni", ""), ("zf_xiaoxiao", ""), ("zf_xiaoyi", ""),
    ("zm_yunjian", ""), ("zm_yunxi", ""), ("zm_yunxia", ""), ("zm_yunyang", ""),
    ("ef_dora", ""), ("em_alex", ""), ("em_santa", ""),
    ("ff_siwis", ""),
    ("hf_alpha", ""), ("hf_beta", ""), ("hm_omega", ""), ("hm_psi", ""),
    ("if_sara", ""), ("im_nicola", ""),
    ("pf_dora", ""), ("pm_alex", ""), ("pm_santa", ""),
)

# espeak-ng voice names (Debian espeak-ng 1.51 `espeak-ng --voices`) for each language.
ESPEAK_LANG_VOICES: dict[str, str] = {
    "en-us": "en-us", "en-gb": "en-gb", "zh": "cmn", "ja": "ja", "es": "es", "fr": "fr-fr",
    "hi": "hi", "it": "it", "pt-br": "pt-br",
}
ESPEAK_FEMALE_VARIANT = "+f3"


class VoiceError(ValueError):
    """A voice id that no engine knows, or a language that no installed voice speaks."""


@dataclass(frozen=True)
class VoiceInfo:
    id: str
    backend: str            # KOKORO | ESPEAK
    lang: str               # a key of LANG_NAMES
    gender: str             # FEMALE | MALE
    label: str              # what a voice picker shows, e.g. "female, warm (grade A)"
    installed: bool = False  # filled in by the daemon, which knows what is on disk


def _kokoro_info(voice_id: str, description: str) -> VoiceInfo:
    lang = KOKORO_LANG_LETTERS[voice_id[0]]
    gender = KOKORO_GENDER_LETTERS[voice_id[1]]
    label = f"{gender}, {description}" if description else f"{gender}, {LANG_NAMES[lang]}"
    return VoiceInfo(voice_id, KOKORO, lang, gender, label)


def _espeak_infos() -> list[VoiceInfo]:
    infos = []
    for lang, espeak_voice in ESPEAK_LANG_VOICES.items():
        for gender, variant in ((MALE, ""), (FEMALE, ESPEAK_FEMALE_VARIANT)):
            infos.append(VoiceInfo(f"{ESPEAK_PREFIX}{espeak_voice}{variant}", ESPEAK, lang, gender,
                                   f"{gender}, {LANG_NAMES[lang]}, robotic (espeak-ng)"))
    return infos


KNOWN_VOICES: dict[str, VoiceInfo] = {
    info.id: info
    for info in [*(_kokoro_info(v, d) for v, d in _KOKORO_V1_0), *_espeak_infos()]
}

# What a new cast member gets: the best-graded Kokoro voice where there is one.
DEFAULT_VOICES: dict[str, dict[str, str]] = {
    "en-us": {FEMALE: "af_heart", MALE: "am_michael"},
    "en-gb": {FEMALE: "bf_emma", MALE: "bm_george"},
    "zh": {FEMALE: "zf_xiaoxiao", MALE: "zm_yunxi"},
    "ja": {FEMALE: "jf_alpha", MALE: "jm_kumo"},
    "es": {FEMALE: "ef_dora", MALE: "em_alex"},
    "fr": {FEMALE: "ff_siwis", MALE: "espeak:fr-fr"},
    "hi": {FEMALE: "hf_alpha", MALE: "hm_omega"},
    "it": {FEMALE: "if_sara", MALE: "im_nicola"},
    "pt-br": {FEMALE: "pf_dora", MALE: "pm_alex"},
}


def canonical_lang(lang: str) -> str:
    """'en', 'EN-US', 'cmn' … → a key of LANG_NAMES; VoiceError for a language nobody speaks."""
    key = lang.strip().lower().replace("_", "-")
    key = LANG_ALIASES.get(key, key)
    if key not in LANG_NAMES:
        raise VoiceError(f"language {lang!r} is not supported; use one of {', '.join(LANG_NAMES)}")
    return key


def default_voice(lang: str, gender: str = FEMALE) -> str:
    return DEFAULT_VOICES[canonical_lang(lang)][gender]


def voice_info(voice_id: str) -> VoiceInfo:
    """The catalog entry for an id; VoiceError (saying where the valid ids are) if unknown."""
    info = KNOWN_VOICES.get(voice_id)
    if info is None:
        raise VoiceError(
            f"unknown voice {voice_id!r}: valid ids are Kokoro voices like 'af_heart' and "
            f"espeak-ng voices like 'espeak:en-us' — see the voice list in the studio, "
            f"`python -m studio.cli voices`, or shared.voices.KNOWN_VOICES")
    return info


def closest_installed(voice_id: str, installed: set[str]) -> tuple[VoiceInfo, str | None]:
    """The voice to use for `voice_id` given the ids installed now, and a warning if it differs.

    Preference: the voice itself; else same language and gender, Kokoro before espeak-ng;
    else same language, other gender; else the other variety of the same language (en-gb for
    en-us …). VoiceError when no installed voice speaks the language at all.
    """
    wanted = voice_info(voice_id)
    if voice_id in installed:
        return replace(wanted, installed=True), None
    family = wanted.lang.split("-")[0]

    def rank(info: VoiceInfo) -> tuple[int, int, int, int, str]:
        is_default = DEFAULT_VOICES[info.lang][info.gender] == info.id
        # The id last makes the choice the same on every run.
        return (0 if info.lang == wanted.lang else 1,
                0 if info.gender == wanted.gender else 1,
                0 if info.backend == wanted.backend else 1,
                0 if is_default else 1,
                info.id)

    candidates = [KNOWN_VOICES[v] for v in installed
                  if v in KNOWN_VOICES and KNOWN_VOICES[v].lang.split("-")[0] == family]
    if not candidates:
        raise VoiceError(
            f"voice {voice_id!r} is not installed and no installed voice speaks "
            f"{LANG_NAMES[wanted.lang]}: install espeak-ng (apt-get install -y espeak-ng) or "
            f"the Kokoro weights (weights/download.sh kokoro)")
    best = min(candidates, key=rank)
    warning = f"voice {voice_id} is not installed — using {best.id} ({best.label}) instead"
    return replace(best, installed=True), warning
