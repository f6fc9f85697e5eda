"""MultiTalk's audio adapter input: wav2vec2 windows → 32 audio tokens per latent frame.

The pipeline gathers, for every video frame, a window of wav2vec2 hidden states around it
(`audio_window_index`, `gather_audio_windows`); the DiT groups those windows by latent frame
(`split_latent_windows`) and projects them (`AudioProjModel`, state_dict prefix `audio_proj.`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

# wav2vec2-base gives 12 hidden states of 768 channels per frame; the official adapter has
# these two numbers built in (they size proj1/proj1_vf), config.json does not carry them.
AUDIO_LAYERS = 12
AUDIO_CHANNELS = 768


def audio_window_index(start: int, frame_num: int, total: int, window: int = 5,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """Row i = wav2vec2 frames start+i−⌊window/2⌋ … start+i+⌊window/2⌋, clamped to [0, total−1].

    → [frame_num, window] int64 (the official pipeline's `center_indices`).
    """
    offsets = torch.arange(window, device=device) - window // 2
    centres = torch.arange(start, start + frame_num, device=device)
    return (centres[:, None] + offsets[None, :]).clamp(0, total - 1)


def gather_audio_windows(features: torch.Tensor, start: int, frame_num: int,
                         window: int = 5) -> torch.Tensor:
    """features [T, layers, C] of one speaker → [frame_num, window, layers, C]."""
    index = audio_window_index(start, frame_num, features.shape[0], window, features.device)
    return features[index]


def split_latent_windows(audio: torch.Tensor, vae_scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group per-video-frame windows by latent frame, as the official DiT forward does.

    audio [N, frame_num, W, layers, C] with frame_num = 1 + vae_scale·n_t →
      first [N, 1, W, layers, C]: latent frame 0 is video frame 0 alone, its whole window;
      later [N, n_t, W + vae_scale − 1, layers, C]: each later latent frame covers vae_scale
        video frames; it takes the first frame's window up to the centre, the centre of each
        middle frame, and the last frame's window from the centre on (8 vectors for W 5, scale 4).
    """
    n, frame_num, window = audio.shape[:3]
    if (frame_num - 1) % vae_scale:
        raise ValueError(f"audio has {frame_num} frames; expected 1 + {vae_scale}·k video frames")
    middle = window // 2
    first = audio[:, :1]
    later = audio[:, 1:].unflatten(1, ((frame_num - 1) // vae_scale, vae_scale))  # [N, n_t, s, W, l, C]
    later = torch.cat([
        later[:, :, 0, :middle + 1],       # first video frame of the group: window[:centre+1]
        later[:, :, 1:-1, middle],         # middle frames: their centre vector each
        later[:, :, -1, middle:],          # last frame: window[centre:]
    ], dim=2)
    return first, later


def split_k_linear(layer: nn.Linear, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """layer(x) for a very wide input, as a sum of float32 partial products over chunks of K.

    proj1/proj1_vf read 46,080 / 92,160 inputs; one float32 GEMM over that K accumulates
    rounding of ~1e-6 that the LayerNorm at the end amplifies ~10×. One partial product per
    768-channel vector, summed afterwards, stays within ~1e-7 of exact; at full size this layer
    is ~1 GFLOP per forward, so the extra care costs nothing measurable.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs = x.to(acc).unflatten(-1, (-1, chunk))                       # [..., c, chunk]
    ws = layer.weight.to(acc).unflatten(-1, (-1, chunk))            # [O, c, chunk]
    partial = torch.einsum("...ck,ock->...co", xs, ws)              # [..., c, O]
    return (partial.sum(-2) + layer.bias.to(acc)).to(x.dtype)


class AudioProjModel(nn.Module):
    """Windows of wav2vec2 features → context_tokens × output_dim tokens per latent frame."""

    def __init__(self, window: int, window_later: int, intermediate_dim: int,
                 context_tokens: int, output_dim: int, norm_output: bool,
                 layers: int = AUDIO_LAYERS, channels: int = AUDIO_CHANNELS):
        super().__init__()
        self.context_tokens = context_tokens
        self.output_dim = output_dim
        self.channels = channels
        self.proj1 = nn.Linear(window * layers * channels, intermediate_dim)
        self.proj1_vf = nn.Linear(window_later * layers * channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim) if norm_output else nn.Identity()

    def forward(self, first: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
        """first [N, 1, W, layers, C], later [N, n_t, W', layers, C] → [N, 1+n_t, K, A]."""
        h_first = torch.relu(split_k_linear(self.proj1, first.flatten(2), self.channels))      # [N, 1, I]
        h_later = torch.relu(split_k_linear(self.proj1_vf, later.flatten(2), self.channels))   # [N, n_t, I]
        h = torch.relu(self.proj2(torch.cat([h_first, h_later], dim=1)))
        tokens = self.proj3(h).unflatten(-1, (self.context_tokens, self.output_dim))
        return self.norm(tokens)
