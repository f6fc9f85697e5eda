"""Text → phonemes for Kokoro, built so that nothing is ever downloaded.

misaki's English G2P (`misaki.en.G2P.__init__`) calls `spacy.cli.download("en_core_web_sm")`
when that spaCy model is not installed — a network fetch at run time. We never call that
constructor: `OfflineEnglishG2P` sets the same six attributes misaki 0.9.4's `__call__` reads
(version, british, nlp, lexicon, fallback, unk) and hands it a local spaCy pipeline:
- en_core_web_sm when it is installed as a package (full POS tags: heteronyms like "read" and
  "live" are chosen by part of speech, as upstream);
- otherwise spaCy's blank English tokenizer plus a rule tagger for punctuation, currency and
  numbers (the tags misaki needs to keep commas/full stops as pauses and read "$3.50"), with no
  part-of-speech tags: heteronyms take their most common reading. TTS.info() says so.
Words missing from misaki's lexicon are spelled by espeak-ng through the libespeak-ng that the
espeakng-loader package bundles (misaki's EspeakFallback), also offline.

Mandarin uses misaki's ZHG2P (jieba + pypinyin + cn2an, all local data). Spanish, French, Hindi,
Italian and Brazilian Portuguese use misaki's EspeakG2P (the same bundled libespeak-ng).
Japanese needs misaki[ja] (pyopenjtalk), which is not installed: its voices are not offered.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from typing import Callable

SPACY_ENGLISH_MODEL = "en_core_web_sm"
# What misaki.en.G2P enables in the spaCy model (trf=False): POS tags, nothing else.
SPACY_COMPONENTS = ["tok2vec", "tagger"]

# Python modules each language's G2P imports; a language whose modules are missing has no
# Kokoro voices (they fall back to espeak-ng).
_REQUIRED_MODULES: dict[str, tuple[str, ...]] = {
    "en-us": ("spacy", "num2words", "espeakng_loader", "phonemizer"),
    "en-gb": ("spacy", "num2words", "espeakng_loader", "phonemizer"),
    "zh": ("jieba", "pypinyin", "cn2an"),
    "ja": ("pyopenjtalk",),
    "es": ("phonemizer", "espeakng_loader"),
    "fr": ("phonemizer", "espeakng_loader"),
    "hi": ("phonemizer", "espeakng_loader"),
    "it": ("phonemizer", "espeakng_loader"),
    "pt-br": ("phonemizer", "espeakng_loader"),
}
_INSTALL_HINTS = {"ja": "pip install 'misaki[ja]'", "zh": "pip install 'misaki[zh]'"}
# espeak-ng language names misaki's EspeakG2P takes (kokoro's LANG_CODES).
_ESPEAK_G2P_LANGUAGES = {"es": "es", "fr": "fr-fr", "hi": "hi", "it": "it", "pt-br": "pt-br"}



@dataclass(frozen=True)
class G2P:
    """A language's phonemizer and what, if anything, is degraded about it."""
    lang: str
    phonemize: Callable[[str], str]
    mode: str          # part of the cache key: another G2P gives other audio
    notes: tuple[str, ...] = ()


def missing_requirement(lang: str) -> str | None:
    """Why `lang` has no Kokoro G2P here (with the fix), or None when it has one."""
    missing = [m for m in _REQUIRED_MODULES.get(lang, ("?",)) if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    hint = _INSTALL_HINTS.get(lang, "pip install 'misaki[en]'")
    return f"Kokoro {lang} G2P needs {', '.join(missing)} — {hint}"


def english_mode() -> str:
    """Which spaCy pipeline the English G2P will use (cheap: no spaCy import)."""
    if importlib.util.find_spec(SPACY_ENGLISH_MODEL) is not None:
        return f"spacy-{SPACY_ENGLISH_MODEL}-{importlib.metadata.version(SPACY_ENGLISH_MODEL)}"
    return "spacy-blank-en+rule-tags"


def build_g2p(lang: str) -> G2P:
    """The phonemizer for a catalog language (see shared.voices.LANG_NAMES)."""
    problem = missing_requirement(lang)
    if problem:
        raise RuntimeError(problem)
    if lang in ("en-us", "en-gb"):
        return _english(british=lang == "en-gb")
    if lang == "zh":
        from misaki import zh
        # version=None is the G2P that Kokoro-82M v1.0's zf_/zm_ voices were trained with
        # ("1.1" belongs to the separate Kokoro-82M-v1.1-zh model).
        g2p = zh.ZHG2P(version=None)
        return G2P(lang, lambda text: g2p(text)[0], f"misaki-zh-{_version('misaki')}")
    if lang in _ESPEAK_G2P_LANGUAGES:
        from misaki import espeak
        g2p = espeak.EspeakG2P(language=_ESPEAK_G2P_LANGUAGES[lang])
        return G2P(lang, lambda text: g2p(text)[0], f"misaki-espeak-{_version('misaki')}",
                   ("no text chunking for this language: very long lines are cut at 510 "
                    "phonemes",))
    raise RuntimeError(f"no Kokoro G2P for {lang}")


def _english(british: bool) -> G2P:
    # Imported here: spaCy and misaki.en take seconds to import; espeak-only use never pays it.
    import spacy
    from misaki import espeak

    from daemon.tts.g2p_english import OfflineEnglishG2P, RuleTaggedEnglish

    notes = []
    mode = english_mode()
    if importlib.util.find_spec(SPACY_ENGLISH_MODEL) is not None:
        nlp = spacy.load(SPACY_ENGLISH_MODEL, enable=SPACY_COMPONENTS)
    else:
        nlp = RuleTaggedEnglish(spacy.blank("en"))   # KokoroBackend's info notes say so
    try:
        fallback = espeak.EspeakFallback(british=british)
    except Exception as exc:  # the bundled libespeak-ng failed to load: unknown words are skipped
        fallback = None
        notes.append(f"English G2P: espeak fallback unavailable ({exc}); words missing from "
                     "the lexicon are skipped")
    g2p = OfflineEnglishG2P(nlp=nlp, british=british, fallback=fallback)
    return G2P("en-gb" if british else "en-us", lambda text: g2p(text)[0],
               f"misaki-en-{_version('misaki')}-{mode}", tuple(notes))


def _version(package: str) -> str:
    return importlib.metadata.version(package)
