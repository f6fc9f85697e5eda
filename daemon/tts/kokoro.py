"""Kokoro-82M v1.0: the neural voice, loaded once from weights/Kokoro-82M and kept resident.

Layout (as released in hexgrad/Kokoro-82M):
    Kokoro-82M/config.json          model sizes and the phoneme vocabulary
    Kokoro-82M/kokoro-v1_0.pth      {"bert": sd, "bert_encoder": sd, "predictor": sd,
                                     "text_encoder": sd, "decoder": sd}, keys may carry "module."
    Kokoro-82M/voices/<id>.pt       a style tensor [510, 1, 256]: row n-1 is used for n phonemes

Nothing touches the Hugging Face hub: `KModel` only downloads when it is given no config or no
checkpoint, and we give it both (the config as a dict, an empty in-memory checkpoint) and then
load the real checkpoint ourselves, strictly, so a wrong or partial file is an error instead of
kokoro's silent `strict=False` fallback. kokoro's `KPipeline` is not used: its English
constructor would download a spaCy model (see daemon/tts/g2p.py); we phonemize and chunk here.
"""
from __future__ import annotations

import importlib.metadata
import io
import json
from pathlib import Path

import numpy as np
import torch

from daemon.models.loader import WeightsError, download_hint, require_file
from daemon.tts.g2p import (SPACY_ENGLISH_MODEL, G2P, build_g2p, english_mode,
                            missing_requirement)
from daemon.tts.speech import BackendState, SpeechError
from shared.voices import KNOWN_VOICES, KOKORO

FOLDER = "Kokoro-82M"
CONFIG_FILE = "config.json"
MODEL_FILE = "kokoro-v1_0.pth"
VOICES_FOLDER = "voices"
# Only a name for KModel (it picks the checkpoint file name and the zh G2P version from it):
# with a config and a checkpoint passed in, KModel downloads nothing.
REPO_ID = "hexgrad/Kokoro-82M"
COMPONENTS = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")
SAMPLE_RATE = 24_000
# The ALBERT context is 512 tokens; two of them are the start/end pads KModel adds.
MAX_PHONEMES = 510
STYLE_DIM = 256


class KokoroBackend:
    name = KOKORO

    def __init__(self, folder: Path, device: str | torch.device = "cpu"):
        self._folder = Path(folder)
        self._device = torch.device(device)
        self._model = None
        self._load_error = ""
        self._voice_packs: dict[str, torch.Tensor] = {}
        self._g2p: dict[str, G2P] = {}

    # ------------------------------------------------------------------ what is there

    def _files_problem(self) -> str:
        for name in (CONFIG_FILE, MODEL_FILE):
            try:
                require_file(self._folder / name)
            except WeightsError as exc:
                return str(exc)
        return ""

    def state(self) -> BackendState:
        problem = self._load_error or self._files_problem()
        if problem:
            return BackendState(KOKORO, False, "", problem, self._g2p_notes())
        if self._model is None:
            detail = f"{self._folder} present; loads on first use ({self._device})"
        else:
            params = sum(p.numel() for p in self._model.parameters()) / 1e6
            detail = f"loaded on {self._device} ({params:.1f} M parameters)"
        return BackendState(KOKORO, True, self._version(), detail, self._g2p_notes())

    def _g2p_notes(self) -> tuple[str, ...]:
        """What is degraded or missing in the offline G2P, for info()."""
        notes = []
        if english_mode().startswith("spacy-blank"):
            notes.append(f"English G2P: spaCy {SPACY_ENGLISH_MODEL} is not installed, so words are "
                         "tagged by rules only (no part of speech: heteronyms such as 'read' "
                         "take their most common reading)")
        langs = sorted({info.lang for info in KNOWN_VOICES.values() if info.backend == KOKORO})
        notes.extend(problem for lang in langs if (problem := missing_requirement(lang)))
        notes.extend(note for g2p in self._g2p.values() for note in g2p.notes)
        return tuple(notes)

    def installed_voices(self) -> set[str]:
        if self._load_error or self._files_problem():
            return set()
        return {voice_id for voice_id, info in KNOWN_VOICES.items()
                if info.backend == KOKORO and self._voice_file(voice_id).is_file()
                and missing_requirement(info.lang) is None}

    def why_missing(self, voice_id: str) -> str:
        """Why a catalog Kokoro voice is not installed, with the fix (for fallback warnings)."""
        problem = self._load_error or self._files_problem()
        if problem:
            return problem
        lang_problem = missing_requirement(KNOWN_VOICES[voice_id].lang)
        if lang_problem:
            return lang_problem
        path = self._voice_file(voice_id)
        return f"{path} missing — {download_hint(path)}"

    def fingerprint(self, voice_id: str) -> str:
        """Everything that changes this voice's audio for the same text: part of the cache key."""
        model = self._folder / MODEL_FILE
        voice = self._voice_file(voice_id)
        lang = KNOWN_VOICES[voice_id].lang
        g2p_mode = english_mode() if lang.startswith("en") else lang
        return (f"{self._version()}|{_file_identity(model)}|{_file_identity(voice)}|"
                f"g2p={g2p_mode}")

    def _voice_file(self, voice_id: str) -> Path:
        return self._folder / VOICES_FOLDER / f"{voice_id}.pt"

    @staticmethod
    def _version() -> str:
        return f"kokoro-{importlib.metadata.version('kokoro')}+misaki-" \
               f"{importlib.metadata.version('misaki')}"

    # ------------------------------------------------------------------ loading

    def load(self):
        """Build the model once (on the configured device); WeightsError says which file and
        how to fix it. Later calls return the resident model."""
        if self._model is not None:
            return self._model
        try:
            self._model = self._build_model()
        except WeightsError as exc:
            self._load_error = str(exc)
            raise
        return self._model

    def _build_model(self):
        from kokoro import KModel  # imports transformers: seconds, so only when Kokoro is used

        config_path = require_file(self._folder / CONFIG_FILE)
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            model = KModel(repo_id=REPO_ID, config=config, model=_empty_checkpoint())
        except (ValueError, KeyError, TypeError) as exc:
            raise WeightsError(f"{config_path} is not a Kokoro config ({exc}) — "
                               f"{download_hint(config_path)}") from exc
        checkpoint_path = require_file(self._folder / MODEL_FILE)
        checkpoint = _read_checkpoint(checkpoint_path)
        for component in COMPONENTS:
            if component not in checkpoint:
                raise WeightsError(f"{checkpoint_path} has no {component!r} weights — "
                                   f"{download_hint(checkpoint_path)}")
            state = {_strip_data_parallel(k): v for k, v in checkpoint[component].items()}
            # Unexpected keys (e.g. buffers older transformers versions saved) are harmless;
            # a missing key would leave random weights in the model, so it is an error.
            result = getattr(model, component).load_state_dict(state, strict=False)
            if result.missing_keys:
                raise WeightsError(
                    f"{checkpoint_path}: {component} lacks {len(result.missing_keys)} tensors "
                    f"(e.g. {result.missing_keys[0]}) — not a Kokoro-82M v1.0 checkpoint? "
                    f"{download_hint(checkpoint_path)}")
        return model.to(self._device).eval()

    def _voice_pack(self, voice_id: str) -> torch.Tensor:
        if voice_id not in self._voice_packs:
            path = require_file(self._voice_file(voice_id))
            try:
                pack = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise WeightsError(f"{path} cannot be read ({exc}) — {download_hint(path)}") from exc
            if not (isinstance(pack, torch.Tensor) and pack.ndim == 3 and pack.shape[1] == 1
                    and pack.shape[2] == STYLE_DIM):
                shape = tuple(pack.shape) if isinstance(pack, torch.Tensor) else type(pack).__name__
                raise WeightsError(f"{path} is not a Kokoro voice (expected [N, 1, {STYLE_DIM}], "
                                   f"got {shape}) — {download_hint(path)}")
            self._voice_packs[voice_id] = pack.to(self._device, torch.float32)
        return self._voice_packs[voice_id]

    def g2p(self, lang: str) -> G2P:
        if lang not in self._g2p:
            self._g2p[lang] = build_g2p(lang)
        return self._g2p[lang]

    # ------------------------------------------------------------------ speaking

    def phonemize(self, text: str, voice_id: str) -> str:
        return self.g2p(KNOWN_VOICES[voice_id].lang).phonemize(text)

    def synthesize(self, text: str, voice_id: str, speed: float) -> tuple[np.ndarray, int]:
        model = self.load()
        pack = self._voice_pack(voice_id)
        phonemes = self.phonemize(text, voice_id)
        chunks = split_phonemes(phonemes, MAX_PHONEMES)
        if not chunks:
            raise SpeechError(f"nothing to pronounce in {text[:40]!r} (no letters the "
                              f"{KNOWN_VOICES[voice_id].lang} G2P can read)")
        pieces = []
        with torch.inference_mode():
            for chunk in chunks:
                # The voice pack holds one style vector per phoneme count.
                style = pack[min(len(chunk), pack.shape[0]) - 1]          # [1, 256]
                audio = model(chunk, style, speed)                        # [samples] on CPU
                pieces.append(audio.float().numpy())
        return np.concatenate(pieces).astype(np.float32), SAMPLE_RATE


def split_phonemes(phonemes: str, limit: int) -> list[str]:
    """Cut a phoneme string into pieces of at most `limit` characters, preferring the last
    sentence end, then clause mark, then space within the limit."""
    pieces = []
    rest = phonemes.strip()
    while len(rest) > limit:
        cut = -1
        for marks in (".!?…", ",;:—", " "):
            cut = max(rest.rfind(mark, 0, limit) for mark in marks)
            if cut > 0:
                break
        if cut <= 0:
            cut = limit - 1
        pieces.append(rest[:cut + 1].strip())
        rest = rest[cut + 1:].strip()
    if rest:
        pieces.append(rest)
    return [piece for piece in pieces if piece]


def _empty_checkpoint() -> io.BytesIO:
    # KModel.__init__ torch.load()s whatever `model` names; an empty state dict loads nothing
    # and keeps it away from the hub. The real weights are loaded strictly afterwards.
    buffer = io.BytesIO()
    torch.save({}, buffer)
    buffer.seek(0)
    return buffer


def _read_checkpoint(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The component → state dict archive; weights_only, so no pickled code runs."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise WeightsError(f"{path} cannot be read as a weights-only checkpoint ({exc}) — "
                           f"{download_hint(path)}") from exc
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise WeightsError(f"{path} is not a Kokoro checkpoint (expected a state dict per "
                           f"component) — {download_hint(path)}")
    return raw


def _strip_data_parallel(key: str) -> str:
    # The released checkpoint was saved from nn.DataParallel: keys start with "module.".
    return key[len("module."):] if key.startswith("module.") else key


def _file_identity(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return f"{path.name}:absent"
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"
