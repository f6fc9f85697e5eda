"""misaki's English G2P, constructed without its network fallback (see daemon/tts/g2p.py).

`misaki.en.G2P.__init__` runs `spacy.cli.download("en_core_web_sm")` when that model is not
installed. `OfflineEnglishG2P` skips that constructor and sets the six attributes misaki 0.9.4's
`G2P.__call__` reads; everything else (lexicon, number reading, stress, espeak fallback for
unknown words) is misaki's own code.
"""
from __future__ import annotations

from misaki import en

# Penn Treebank tags (what spaCy's English tagger emits and misaki reads) for tokens a rule can
# tag without a statistical model: punctuation (kept as pauses), currency symbols and numbers.
_PUNCTUATION_TAGS = {
    ",": ",", ";": ":", ":": ":", "—": ":", "–": ":", "-": ":", "...": ":", "…": ":",
    "(": "-LRB-", ")": "-RRB-", "“": "``", "”": "''", '"': '""',
    "$": "$", "£": "$", "€": "$",
}
_SENTENCE_END = set(".!?")


class OfflineEnglishG2P(en.G2P):
    def __init__(self, nlp, british: bool, fallback, unk: str = ""):
        # `unk=""` drops what nothing can pronounce instead of inserting misaki's "❓" (kokoro's
        # KPipeline does the same).
        self.version = None
        self.british = british
        self.nlp = nlp
        self.lexicon = en.Lexicon(british)
        self.fallback = fallback
        self.unk = unk


class RuleTaggedEnglish:
    """spaCy's blank English tokenizer with Penn tags on punctuation, currency symbols and
    numbers; every other token keeps an empty tag. Callable like a spaCy `Language`."""

    def __init__(self, blank_nlp):
        self._nlp = blank_nlp

    def __call__(self, text: str):
        doc = self._nlp.make_doc(text)
        for token in doc:
            tag = rule_tag(token.text, token.like_num)
            if tag:
                token.tag_ = tag
        return doc


def rule_tag(text: str, like_num: bool) -> str:
    if text in _PUNCTUATION_TAGS:
        return _PUNCTUATION_TAGS[text]
    if text and set(text) <= _SENTENCE_END:
        return "."
    if like_num:
        return "CD"
    return ""
