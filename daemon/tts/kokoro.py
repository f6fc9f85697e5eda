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

Once loaded, weight norm is folded into plain weights and, on a CPU, the iSTFTNet generator is
swapped for ChannelsLastGenerator (same output to float round-off, 1.25-1.4x faster
there; see "CPU inference form" below and bench/tts_bench.py).
"""
from __future__ import annotations

import importlib.metadata
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm

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
        model = model.to(self._device).eval()
        fold_weight_norm(model)
        if self._device.type == "cpu":
            # Measured on CPUs only (bench/tts_bench.py); a GPU keeps kokoro's own generator.
            model.decoder.generator = ChannelsLastGenerator(model.decoder.generator)
        return model

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


# ---------------------------------------------------------------------- CPU inference form
#
# Nine tenths of a Kokoro synthesis is the iSTFTNet generator: 48 convolutions (kernels 3-11,
# dilations 1-5) over 256 channels at 800 and 128 channels at 4800 frames per second of audio,
# each behind AdaIN and Snake: about 50 GFLOP per second of audio. ChannelsLastGenerator computes
# what kokoro.istftnet.Generator computes, with the same weights, on [B, C, 1, T] channels-last
# tensors: there oneDNN's 2-D convolution runs near the CPU's matmul peak, about twice its 1-D
# NCW speed (AVX2, 2 threads: 125-138 vs 55-70 GFLOP/s). The layout alone gains nothing, because
# InstanceNorm then takes a slow strided path; done as batch norm (channels-last kernel) with
# AdaIN's (1 + gamma) and beta folded into its affine, it does. Results differ from kokoro's by
# float round-off only (tests/test_tts_kokoro_inference.py).


def fold_weight_norm(model: nn.Module) -> int:
    """Replace each weight-norm reparametrization (torch's hook recomputes g·v/‖v‖ on every
    forward) by the plain weight it yields. Returns how many were folded."""
    folded = 0
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, WeightNorm):
                torch.nn.utils.remove_weight_norm(module, hook.name)
                folded += 1
    return folded


class ChannelsLastConv(nn.Module):
    """A (weight-norm-free) Conv1d or ConvTranspose1d run as its 2-D twin on [B, C, 1, T]
    channels-last tensors."""

    def __init__(self, conv: nn.Conv1d | nn.ConvTranspose1d):
        super().__init__()
        if conv.groups != 1:
            raise ValueError(f"ChannelsLastConv handles groups=1 only, got {conv}")
        if any(isinstance(hook, WeightNorm) for hook in conv._forward_pre_hooks.values()):
            raise ValueError(f"{conv} still has weight norm: fold_weight_norm() the model first")
        self.transposed = isinstance(conv, nn.ConvTranspose1d)
        weight = conv.weight.detach().unsqueeze(2)          # [O, I, 1, K] ([I, O, 1, K] transposed)
        self.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last),
                                   requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(),
                                                                requires_grad=False)
        self.stride = (1, conv.stride[0])
        self.padding = (0, conv.padding[0])
        self.dilation = (1, conv.dilation[0])
        self.output_padding = (0, conv.output_padding[0]) if self.transposed else (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                      self.output_padding, 1, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


def adain_snake(x: torch.Tensor, adain: nn.Module, style: torch.Tensor,
                alpha: torch.Tensor, inverse_alpha: torch.Tensor) -> torch.Tensor:
    """Snake(AdaIN(x, style)) of kokoro's AdaINResBlock1 on x [1, C, 1, T]; `adain` is a
    kokoro AdaIN1d (fc: style → (gamma, beta); norm: an affine InstanceNorm1d)."""
    gamma, beta = adain.fc(style)[0].chunk(2)                             # [C] each
    # For one item, instance norm is batch norm with batch statistics, and its per-channel
    # affine can absorb AdaIN's (1 + gamma)·norm + beta: one pass over x instead of three.
    scale = (1 + gamma) * adain.norm.weight
    shift = (1 + gamma) * adain.norm.bias + beta
    x = F.batch_norm(x, None, None, scale, shift, training=True, momentum=0.0,
                     eps=adain.norm.eps)
    wave = torch.mul(x, alpha).sin_().square_()
    return x.addcmul_(wave, inverse_alpha)                                # x + sin²(αx)/α


class SnakeResBlock(nn.Module):
    """kokoro's AdaINResBlock1 (three dilated AdaIN-Snake-conv pairs with residuals) in the
    channels-last layout; reuses the block's AdaIN modules."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.convs1 = nn.ModuleList(ChannelsLastConv(conv) for conv in block.convs1)
        self.convs2 = nn.ModuleList(ChannelsLastConv(conv) for conv in block.convs2)
        self.adain1, self.adain2 = block.adain1, block.adain2
        for name, alphas in (("alpha1", block.alpha1), ("alpha2", block.alpha2)):
            stacked = torch.stack([a.detach().view(-1) for a in alphas])  # [3, C]
            self.register_buffer(name, stacked[:, None, :, None, None].clone())
            self.register_buffer(f"inverse_{name}", 1 / stacked[:, None, :, None, None])

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        for i in range(len(self.convs1)):
            h = adain_snake(x, self.adain1[i], style, self.alpha1[i], self.inverse_alpha1[i])
            h = self.convs1[i](h)
            h = adain_snake(h, self.adain2[i], style, self.alpha2[i], self.inverse_alpha2[i])
            x = self.convs2[i](h).add_(x)
        return x


class ChannelsLastGenerator(nn.Module):
    """kokoro.istftnet.Generator, same weights and arithmetic, channels-last inside (see above).
    Built from a loaded generator whose weight norm is folded; keeps its harmonic source and
    STFT modules as they are, so the random draws (phase and noise) are the same."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.f0_upsamp = generator.f0_upsamp
        self.m_source = generator.m_source
        self.stft = generator.stft
        self.num_kernels = generator.num_kernels
        self.noise_convs = nn.ModuleList(ChannelsLastConv(c) for c in generator.noise_convs)
        self.noise_res = nn.ModuleList(SnakeResBlock(b) for b in generator.noise_res)
        self.ups = nn.ModuleList(ChannelsLastConv(c) for c in generator.ups)
        self.resblocks = nn.ModuleList(SnakeResBlock(b) for b in generator.resblocks)
        self.conv_post = ChannelsLastConv(generator.conv_post)
        self.post_n_fft = generator.post_n_fft

    def forward(self, x: torch.Tensor, s: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """x [1, C, T] decoder features, s [1, style] style, f0 [1, 2T] pitch (Hz) →
        waveform [1, 1, samples]."""
        if x.shape[0] != 1:
            raise ValueError(f"ChannelsLastGenerator speaks one line at a time, got a batch "
                             f"of {x.shape[0]}")
        f0 = self.f0_upsamp(f0[:, None]).transpose(1, 2)                 # [1, samples, 1]
        harmonics, _, _ = self.m_source(f0)
        spectrum, phase = self.stft.transform(harmonics.transpose(1, 2).squeeze(1))
        source = _channels_last(torch.cat([spectrum, phase], dim=1))    # [1, n_fft+2, 1, F]
        x = _channels_last(x)
        for i, (up, noise_conv, noise_res) in enumerate(zip(self.ups, self.noise_convs,
                                                            self.noise_res)):
            x = F.leaky_relu(x, negative_slope=0.1)
            x_source = noise_res(noise_conv(source), s)
            x = up(x)
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0, 0, 0), mode="reflect")              # kokoro's reflection_pad
            x = x + x_source
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            xs = blocks[0](x, s)
            for block in blocks[1:]:
                xs += block(x, s)
            x = xs / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))[:, :, 0]                      # [1, n_fft+2, F]
        spectrum = torch.exp(x[:, :self.post_n_fft // 2 + 1, :])
        phase = torch.sin(x[:, self.post_n_fft // 2 + 1:, :])
        return self.stft.inverse(spectrum, phase)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T] → [B, C, 1, T], channels last in memory."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


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
