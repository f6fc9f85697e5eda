"""Per-video-frame speech features from wav2vec2, computed as MultiTalk computes them.

MultiTalk's official code subclasses transformers' Wav2Vec2Model to squeeze the CNN features to
the video frame rate before the transformer; that subclass breaks on transformers 5.x. Here the
same steps run on today's public modules (feature_extractor, feature_projection, encoder):

  waveform (16 kHz) → loudness −23 LUFS → zero-mean/unit-variance → CNN features (50 Hz)
  → linear interpolation to 25 fps → projection → transformer → every layer's output
  → [frames, layers, hidden]   ([T, 12, 768] for chinese-wav2vec2-base)

Weights come from the folder's model.safetensors through daemon.models.loader; both key layouts
found in the wild load strictly (see `checkpoint_to_model_keys`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyloudnorm
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from daemon.models.loader import WeightsError, load_safetensors, require_file

SAMPLE_RATE = 16000
VIDEO_FPS = 25
TARGET_LUFS = -23.0

# Pre-training checkpoints keep the encoder under this prefix, next to heads we do not use.
PRETRAINING_PREFIX = "wav2vec2."
# The SpecAugment mask vector: only used when masking inputs in training.
TRAINING_ONLY_KEYS = ("masked_spec_embed",)
# Weight norm of the positional conv: old torch.nn.utils.weight_norm names ⇄ parametrizations.
WEIGHT_NORM_NAMES = (("weight_g", "parametrizations.weight.original0"),
                     ("weight_v", "parametrizations.weight.original1"))


def video_frame_count(num_samples: int) -> int:
    """Video frames (25 fps) covered by a 16 kHz clip, rounded down as the official code does."""
    return int(num_samples / SAMPLE_RATE * VIDEO_FPS)


def normalize_loudness(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE,
                       target_lufs: float = TARGET_LUFS) -> np.ndarray:
    """Gain to `target_lufs` integrated loudness (ITU-R BS.1770 via pyloudnorm).

    Left as is when the measurement is meaningless: silence measures −inf (the official code
    skips |L| > 100) and clips shorter than one 400 ms gating block cannot be measured.
    The result is float64 under numpy 2 (pyloudnorm's gain is a float64 scalar); the next step
    casts to float32.
    """
    meter = pyloudnorm.Meter(sample_rate)
    if len(waveform) < meter.block_size * sample_rate:
        return waveform
    loudness = meter.integrated_loudness(waveform)
    if abs(loudness) > 100:
        return waveform
    return pyloudnorm.normalize.loudness(waveform, loudness, target_lufs)


def checkpoint_to_model_keys(state: dict[str, torch.Tensor],
                             model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Rename a wav2vec2 checkpoint's keys to the model's.

    Accepts a bare Wav2Vec2Model state dict or a pre-training one (`wav2vec2.` prefix plus
    quantizer/projection heads, which are dropped), with either weight-norm naming.
    """
    if any(key.startswith(PRETRAINING_PREFIX) for key in state):
        state = {key[len(PRETRAINING_PREFIX):]: tensor for key, tensor in state.items()
                 if key.startswith(PRETRAINING_PREFIX)}
    renamed = {}
    for key, tensor in state.items():
        if key in TRAINING_ONLY_KEYS:
            continue
        renamed[key if key in model_keys else _weight_norm_rename(key, model_keys)] = tensor
    return renamed


def _weight_norm_rename(key: str, model_keys: set[str]) -> str:
    for legacy, parametrized in WEIGHT_NORM_NAMES:
        for old, new in ((legacy, parametrized), (parametrized, legacy)):
            if key.endswith("." + old) and key[:-len(old)] + new in model_keys:
                return key[:-len(old)] + new
    return key           # left for load_state_dict to report as unexpected


class AudioFeatureExtractor:
    """chinese-wav2vec2-base (or any Wav2Vec2Model folder) → MultiTalk's audio features.

    The official pipeline runs this model in float32; keep `dtype` float32 unless memory is short.
    """

    def __init__(self, folder: Path, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        folder = Path(folder)
        self.device = torch.device(device)
        self.dtype = dtype
        require_file(folder / "config.json")
        require_file(folder / "preprocessor_config.json")
        # Eager attention: what the official features were made with. Inference only: no
        # SpecAugment masking, and so no masked_spec_embed parameter.
        try:
            config = Wav2Vec2Config.from_pretrained(folder, local_files_only=True, attn_implementation="eager",
                                                    mask_time_prob=0.0, mask_feature_prob=0.0)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{folder / 'config.json'} is not a wav2vec2 config ({exc}) "
                               f"— run weights/download.sh wav2vec") from exc
        with torch.device("meta"):      # no random init: every weight comes from the file
            model = Wav2Vec2Model(config)
        weights_path = folder / "model.safetensors"
        state = load_safetensors(weights_path, device=self.device, dtype=dtype)
        state = checkpoint_to_model_keys(state, set(model.state_dict()))
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise WeightsError(f"{weights_path} does not fit the wav2vec2 config beside it ({exc}) "
                               f"— run weights/download.sh wav2vec") from exc
        self.model = model.eval().requires_grad_(False)
        self.normalizer = Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True)

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def features(self, waveform_16k: np.ndarray) -> torch.Tensor:
        """Mono 16 kHz samples [N] → [int(N/16000·25), layers, hidden] on `device`, in `dtype`."""
        num_frames = video_frame_count(len(waveform_16k))
        if num_frames < 1:
            raise ValueError(f"audio of {len(waveform_16k)} samples is shorter than one video frame "
                             f"({SAMPLE_RATE // VIDEO_FPS} samples at {SAMPLE_RATE} Hz)")
        values = self.input_values(normalize_loudness(waveform_16k))
        conv = self.conv_features(values)
        return self.encode(to_video_rate(conv, num_frames))

    def input_values(self, waveform: np.ndarray) -> torch.Tensor:
        """The processor's normalisation: float32, (x − mean)/√(var + 1e-7) over the clip → [1, N]."""
        values = self.normalizer(waveform, sampling_rate=SAMPLE_RATE).input_values[0]
        return torch.from_numpy(np.asarray(values, dtype=np.float32)).unsqueeze(0)

    @torch.no_grad()
    def conv_features(self, input_values: torch.Tensor) -> torch.Tensor:
        """CNN features, one per 20 ms: [1, N] → [1, N50, conv_dim]."""
        values = input_values.to(self.device, self.dtype)
        return self.model.feature_extractor(values).transpose(1, 2)

    @torch.no_grad()
    def encode(self, frame_features: torch.Tensor) -> torch.Tensor:
        """Video-rate CNN features [1, T, conv_dim] → [T, layers, hidden].

        Equals transformers 4.x `hidden_states[1:]`: every layer's output, the last one taken
        from the encoder's return value (after its final LayerNorm in the pre-LN variant).
        """
        hidden, _ = self.model.feature_projection(frame_features)
        encoder = self.model.encoder
        outputs: list[torch.Tensor] = []
        hooks = [layer.register_forward_hook(lambda _module, _args, out: outputs.append(out))
                 for layer in encoder.layers[:-1]]
        try:
            last = encoder(hidden).last_hidden_state
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack([*outputs, last], dim=2).squeeze(0)      # [T, layers, hidden]


def to_video_rate(conv_features: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Linear interpolation (align_corners=True) of [1, N50, C] to [1, num_frames, C]."""
    resampled = F.interpolate(conv_features.transpose(1, 2), size=num_frames,
                              mode="linear", align_corners=True)
    return resampled.transpose(1, 2)
