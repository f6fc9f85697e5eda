"""The Wan2.1 video VAE: a causal 3-D convolutional autoencoder, 8× spatial and 4× temporal.

Parameter names follow the official `Wan2.1_VAE.pth` exactly (the file loads strictly, no
renaming). Every size — base dim, z_dim, dim_mult, res blocks, attention levels, which levels
down-sample time — is read from the state dict's shapes.

Time is processed in chunks and every temporal convolution is *causal*: it only looks back. A
`CausalCache` carries, for each causal layer, the input frames it needs from earlier chunks
(the last 2 for a kernel-3 conv), so decoding chunk by chunk equals decoding all at once and a
decode can stop, hand its cache on, and continue elsewhere (see `WanVAE.decode_chunk`).

A pass may also cover only a horizontal band of rows (several ranks, daemon.parallel.vae_bands):
the band rides in the cache, and the few layers that look across rows — the 3×3 convs, the
down-sampler and the per-frame attention — take their neighbours' rows or the whole frame's
keys and values from it. Without a band (one rank) nothing of that runs.

Shapes (real VAE): video [3, 1+4k, H, W] in [-1, 1] ⇄ latent [z_dim, 1+k, H/8, W/8].
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from daemon.models.loader import WeightsError, load_pth

if TYPE_CHECKING:
    from daemon.parallel.vae_bands import RowBand

# Per-channel statistics of the official VAE's latents; the DiT works on (mu − mean) / std.
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

# The encoder takes the first frame alone, then chunks of this many (official chunking).
ENCODE_CHUNK_FRAMES = 4


@dataclass(frozen=True)
class VAEConfig:
    dim: int                              # base channel count (96 in the real VAE)
    z_dim: int                            # latent channels (16)
    dim_mult: tuple[int, ...]             # channels per level as multiples of dim
    num_res_blocks: int                   # encoder res blocks per level (decoder: one more)
    attn_scales: tuple[float, ...]        # levels (1, 1/2, …) with attention after each res block
    temporal_downsample: tuple[bool, ...]  # per down-sampling step: does it halve time too?

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> VAEConfig:
        """Read the architecture off the encoder's layer list: res blocks, attention and
        down-samplers appear in `encoder.downsamples.N` in build order."""
        try:
            dim = state["encoder.conv1.weight"].shape[0]
            z_dim = state["conv2.weight"].shape[0]
        except KeyError as exc:
            raise WeightsError(f"not a Wan VAE state dict (no {exc})") from exc
        indices = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.downsamples.")})
        blocks_per_level, dim_mult, temporal, attn_scales = [], [], [], []
        blocks, out_dim = 0, dim
        for i in indices:
            prefix = f"encoder.downsamples.{i}."
            if prefix + "residual.2.weight" in state:
                blocks += 1
                out_dim = state[prefix + "residual.2.weight"].shape[0]
            elif prefix + "to_qkv.weight" in state:
                attn_scales.append(1.0 / 2 ** len(dim_mult))
            elif prefix + "resample.1.weight" in state:
                temporal.append(prefix + "time_conv.weight" in state)
                dim_mult.append(out_dim // dim)
                blocks_per_level.append(blocks)
                blocks = 0
            else:
                raise WeightsError(f"not a Wan VAE state dict (unknown layer {prefix[:-1]})")
        dim_mult.append(out_dim // dim)
        blocks_per_level.append(blocks)
        if len(set(blocks_per_level)) != 1:
            raise WeightsError(f"Wan VAE levels have differing res-block counts {blocks_per_level}")
        return cls(dim=dim, z_dim=z_dim, dim_mult=tuple(dim_mult),
                   num_res_blocks=blocks_per_level[0], attn_scales=tuple(sorted(set(attn_scales))),
                   temporal_downsample=tuple(temporal))


class CausalCache:
    """The frames each causal layer needs from earlier chunks, keyed by the layer itself.

    One cache per pass (encoder or decoder) over one video. `started` turns true after the first
    chunk: the temporal down/up-samplers treat that lone first frame specially. `band`: the rows
    this pass computes when the frame is split over ranks (None: the whole frame).
    """

    def __init__(self, started: bool = False, band: RowBand | None = None):
        self.started = started
        self.band = band
        self._frames: dict[nn.Module, torch.Tensor] = {}

    def get(self, layer: nn.Module) -> torch.Tensor | None:
        return self._frames.get(layer)

    def put(self, layer: nn.Module, frames: torch.Tensor) -> None:
        # A copy, so the cache does not keep the whole chunk's activation alive.
        self._frames[layer] = frames.clone()

    def export(self, root: nn.Module) -> dict[str, torch.Tensor]:
        """The cache by module name under `root`, e.g. to send to the rank that continues."""
        names = {module: name for name, module in root.named_modules()}
        return {names[layer]: frames for layer, frames in self._frames.items()}

    @classmethod
    def restore(cls, root: nn.Module, named: dict[str, torch.Tensor]) -> CausalCache:
        """Inverse of `export`: continue a pass whose earlier chunks ran elsewhere."""
        modules = dict(root.named_modules())
        cache = cls(started=bool(named))
        for name, frames in named.items():
            cache._frames[modules[name]] = frames
        return cache


class CausalConv3d(nn.Conv3d):
    """Conv3d that pads time only in front (2·pad frames, from the cache when there is one),
    so output frame t sees input frames ≤ t. Space is padded symmetrically as usual."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size, stride=1, padding=0):
        pad_t, pad_h, pad_w = (padding,) * 3 if isinstance(padding, int) else padding
        super().__init__(in_dim, out_dim, kernel_size, stride=stride, padding=(0, pad_h, pad_w))
        self.time_pad = 2 * pad_t

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        band = cache.band if cache is not None and self.padding[1] else None
        if band is not None:
            # The neighbour bands' rows stand in for the row padding; added before caching, so
            # the cached frames carry them too.
            x = band.halo(x, above=self.padding[1], below=self.padding[1])
        past_frames = 0                                 # x: [B, C, T, H, W]
        if cache is not None and self.time_pad > 0:
            past = cache.get(self)
            if past is not None:
                x = torch.cat([past, x], dim=2)
                past_frames = past.shape[2]
            cache.put(self, x[:, :, -self.time_pad:])
        if past_frames < self.time_pad:                 # zeros before the video's first frame
            x = F.pad(x, (0, 0, 0, 0, self.time_pad - past_frames, 0))
        if band is not None:
            return conv_over_padded_rows(self, x)
        return super().forward(x)


class RMSNorm(nn.Module):
    """L2-normalise over channels, times √C and a learned per-channel gain (Wan's RMS_norm)."""

    def __init__(self, dim: int, spatial_dims: int = 3):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


def conv_over_padded_rows(conv: nn.Conv2d | nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """`conv` on x whose rows are padded already (a band with its halo): columns only."""
    padding = (*conv.padding[:-2], 0, conv.padding[-1])
    run = F.conv3d if x.dim() == 5 else F.conv2d
    return run(x, conv.weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups)


def per_frame(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module (or function) to every frame of [B, C, T, H, W]."""
    b, _, t, _, _ = x.shape
    frames = module(x.transpose(1, 2).flatten(0, 1))          # [B·T, C', H', W']
    return frames.unflatten(0, (b, t)).transpose(1, 2)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        # A Sequential only to keep the checkpoint's numbering: residual.{0,2,3,6}
        # (slots 1, 4 are SiLU, 5 held dropout during training).
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Identity(), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        h = conv1(F.silu(norm1(x)), cache)
        h = conv2(F.silu(norm2(h)), cache)
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H·W positions of each frame (no temporal context)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, spatial_dims=2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        # Nothing here looks across frames; the cache only brings the band, if any.
        band = cache.band if cache is not None else None
        return x + per_frame(lambda frames: self._attend(frames, band), x)

    def _attend(self, frames: torch.Tensor, band: RowBand | None) -> torch.Tensor:
        n, c, h, w = frames.shape
        qkv = self.to_qkv(self.norm(frames))                     # [N, 3C, H, W]
        q, k, v = qkv.flatten(2).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)  # [N, 1, HW, C]
        if band is not None:
            # The band's queries attend to the whole frame: keys and values of every band.
            kv = band.gather(qkv[:, c:])                         # [N, 2C, whole H, W]
            k, v = kv.flatten(2).transpose(1, 2).unsqueeze(1).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.squeeze(1).transpose(1, 2).reshape(n, c, h, w))


class Downsample(nn.Module):
    """Halve H and W (pad right/bottom by 1, 3×3 stride 2); optionally halve time too."""

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if cache.band is None:
            x = per_frame(self.resample, x)
        else:
            # Output row i reads input rows 2i…2i+2: a band takes the first row of the band
            # below where the whole frame has its bottom padding (zeros under the last band).
            _, conv = self.resample
            band = cache.band
            x = per_frame(lambda f: conv(F.pad(band.halo(f, above=0, below=1), (0, 1))), x)
        if self.time_conv is None:
            return x
        past = cache.get(self)
        cache.put(self, x[:, :, -1:])
        if past is None:
            # First chunk (the lone first frame) passes through; from then on a stride-2
            # kernel-3 conv runs over [previous chunk's last frame, this chunk]: 1+4k → 1+2k.
            return x
        return self.time_conv(torch.cat([past, x], dim=2))


class Upsample(nn.Module):
    """Double H and W (nearest-exact, then 3×3 conv to C/2); optionally double time too."""

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                                      nn.Conv2d(dim, dim // 2, 3, padding=1))
        self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0)) if temporal else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        # The first frame stays single (it is the image); later frames each become two. The
        # first chunk never enters time_conv's history, so the second starts from zero padding.
        if self.time_conv is not None and cache.started:
            b, c, t, h, w = x.shape
            pairs = self.time_conv(x, cache)                      # [B, 2C, T, H, W]
            x = pairs.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        if cache.band is None:
            return per_frame(self.resample, x)
        # Nearest ×2 maps a band's rows [a, b) to [2a, 2b); then the conv needs the halo.
        upsample, conv = self.resample
        band = cache.band
        doubled = per_frame(upsample, x)
        return per_frame(lambda f: conv_over_padded_rows(conv, band.halo(f, above=1, below=1)), doubled)


class Encoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks, scale = [], 1.0
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                if scale in cfg.attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if level < len(cfg.dim_mult) - 1:
                blocks.append(Downsample(out_dim, cfg.temporal_downsample[level]))
                scale /= 2
        self.downsamples = nn.Sequential(*blocks)
        self.middle = nn.Sequential(ResidualBlock(out_dim, out_dim), AttentionBlock(out_dim),
                                    ResidualBlock(out_dim, out_dim))
        # Slots 0, 2 as in the checkpoint (1 is the SiLU); mean and log-variance out.
        self.head = nn.Sequential(RMSNorm(out_dim), nn.SiLU(),
                                  CausalConv3d(out_dim, 2 * cfg.z_dim, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for block in (*self.downsamples, *self.middle):
            x = block(x, cache)
        norm, _, conv = self.head
        x = conv(F.silu(norm(x)), cache)
        cache.started = True
        return x


class Decoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temporal_upsample = tuple(reversed(cfg.temporal_downsample))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        blocks, scale = [], 1.0 / 2 ** (len(cfg.dim_mult) - 2)
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if level > 0:
                in_dim //= 2          # the Upsample before this level halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim))
                if scale in cfg.attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if level < len(cfg.dim_mult) - 1:
                blocks.append(Upsample(out_dim, temporal_upsample[level]))
                scale *= 2
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(RMSNorm(out_dim), nn.SiLU(), CausalConv3d(out_dim, 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for block in (*self.middle, *self.upsamples):
            x = block(x, cache)
        norm, _, conv = self.head
        x = conv(F.silu(norm(x)), cache)
        cache.started = True
        return x


class VideoVAE(nn.Module):
    """The network, laid out as the official WanVAE_ (encoder, conv1, conv2, decoder)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)   # → mean, log-variance
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.cfg.dim_mult) - 1)       # 8 for the real VAE


class WanVAE:
    """Encode/decode single videos with the official scaling and chunking.

    Weights and compute run in `dtype` on `device`; the latent scaling runs in float32 and
    results come back as float32 on `device`.
    """

    def __init__(self, model: VideoVAE, device: torch.device | str, dtype: torch.dtype):
        if model.cfg.z_dim != len(LATENT_MEAN):
            raise WeightsError(f"Wan VAE with z_dim {model.cfg.z_dim}: the latent statistics "
                               f"are for z_dim {len(LATENT_MEAN)}")
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        shape = (model.cfg.z_dim, 1, 1, 1)
        self.mean = torch.tensor(LATENT_MEAN, dtype=torch.float32, device=self.device).view(shape)
        # The official code multiplies by 1/std on encode and divides by it on decode; same here,
        # to the last bit.
        self.inv_std = (1.0 / torch.tensor(LATENT_STD, dtype=torch.float32,
                                           device=self.device)).view(shape)

    @classmethod
    def load(cls, path: Path, *, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> WanVAE:
        state = load_pth(path, device=device, dtype=dtype)
        cfg = VAEConfig.from_state_dict(state)
        with torch.device("meta"):
            model = VideoVAE(cfg)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise WeightsError(f"{path} does not match the Wan VAE layout read from it ({exc})") from exc
        return cls(model.eval().requires_grad_(False), device, dtype)

    @property
    def z_dim(self) -> int:
        return self.model.cfg.z_dim

    @torch.no_grad()
    def encode(self, video: torch.Tensor, band: RowBand | None = None) -> torch.Tensor:
        """[3, 1+4k, H, W] in [-1, 1] → scaled latent [z_dim, 1+k, H/8, W/8] (the mean; no sampling).
        With `band`, `video` is that band's rows, and so is the latent (daemon.parallel.vae_bands)."""
        check_video(video, self.model.spatial_factor)
        x = video.to(self.device, self.dtype).unsqueeze(0)
        cache = CausalCache(band=band)
        # Chunks of 1, 4, 4, … frames: the first frame is encoded on its own (it is the image).
        starts = [0, *range(1, x.shape[2], ENCODE_CHUNK_FRAMES)]
        ends = [*starts[1:], x.shape[2]]
        chunks = [self.model.encoder(x[:, :, a:b], cache) for a, b in zip(starts, ends)]
        mu, _log_var = self.model.conv1(torch.cat(chunks, dim=2)).chunk(2, dim=1)
        return ((mu.float() - self.mean) * self.inv_std).squeeze(0)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, band: RowBand | None = None) -> torch.Tensor:
        """[z_dim, T, h, w] → video [3, 1+4(T−1), 8h, 8w] clamped to [-1, 1]. With `band`,
        `latent` is that band's rows and so is the video (daemon.parallel.vae_bands)."""
        return self.decode_unclamped(latent, band).clamp_(-1, 1)

    @torch.no_grad()
    def decode_unclamped(self, latent: torch.Tensor, band: RowBand | None = None) -> torch.Tensor:
        self._check_latent(latent)
        return self.decode_chunk(latent, CausalCache(band=band))

    @torch.no_grad()
    def decode_chunk(self, latent: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Decode consecutive latent frames [z_dim, n, h, w], continuing `cache` (a fresh
        CausalCache starts a video; it is updated in place). Returns the unclamped video frames
        they produce: 1 for the video's first latent frame, 4 for every other.

        Hand-off: after decoding latent frames [0, a), `cache.export(vae.model.decoder)` (a few
        frames per causal conv) can go to another rank, which continues with
        `CausalCache.restore(vae.model.decoder, named)` and decodes [a, b) bit-identically.
        A rank cannot start mid-video without it: one latent frame influences the next ~35
        (the decoder's causal receptive field), longer than an 81-frame clip's 21. Several
        ranks therefore split space, not time: a band of rows each (daemon.parallel.vae_bands).
        """
        z = latent.to(self.device, torch.float32).unsqueeze(0)
        z = (z / self.inv_std + self.mean).to(self.dtype)
        x = self.model.conv2(z)                  # pointwise, so per chunk equals all at once
        frames = [self.model.decoder(x[:, :, i:i + 1], cache) for i in range(x.shape[2])]
        return torch.cat(frames, dim=2).squeeze(0).float()

    def _check_latent(self, latent: torch.Tensor) -> None:
        if latent.dim() != 4 or latent.shape[0] != self.z_dim or latent.shape[1] < 1:
            raise ValueError(f"latent must be [{self.z_dim}, T≥1, h, w], got {list(latent.shape)}")


def check_video(video: torch.Tensor, spatial_factor: int = 8) -> None:
    """The encoder needs RGB, 1+4k frames and sides divisible by its spatial factor."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be [3, frames, H, W], got {list(video.shape)}")
    frames, h, w = video.shape[1:]
    if frames < 1 or (frames - 1) % ENCODE_CHUNK_FRAMES:
        nearest = 1 + ENCODE_CHUNK_FRAMES * max(0, (frames - 1) // ENCODE_CHUNK_FRAMES)
        raise ValueError(f"video has {frames} frames; the VAE needs 1+4k frames (e.g. {nearest})")
    if h % spatial_factor or w % spatial_factor:
        raise ValueError(f"video is {w}×{h}; both sides must be multiples of {spatial_factor}")
