"""The Wan VAE over several ranks: each rank encodes or decodes one horizontal band of rows.

Time cannot be split (the decoder's causal receptive field is longer than a clip, see
`WanVAE.decode_chunk`), but space can, exactly. Every layer of the VAE is local in space but
three, and those get what they read from the other bands:

    RMS norms, SiLU, 1×1 convs, time convs    per position: the band alone
    nearest ×2 up-sampling                    band rows [a, b) → [2a, 2b): the band alone
    3×3 convs (padding 1)                     `halo`: one row of each neighbour band; zeros
                                              only above the first band and below the last
    down-sampling (pad bottom, 3×3 stride 2)  `halo`: one row of the band below (encoder)
    per-frame self-attention                  `gather`: the band's queries attend to the keys
                                              and values of the whole frame

So a pass over a band computes the band's rows of the whole-frame pass, with no redundant rows:
bit for bit in float64; in float32 up to the kernels' shape-dependent summation order (convs
and GEMMs pick their algorithm by tensor size: a few ulps, tests/test_parallel_vae.py).

Bands are whole latent rows (×2 per up-sampling, 8× in the video), split by `balanced_counts`
like the DiT's token slices (sizes differ by at most one, the larger first), so the rows need
not divide by the ranks. The exchanges are small: per padded conv and chunk, 2 edge rows from
each rank (one all-gather of equal sizes); per attention, the frame's keys and values at that
level. The halos are added before a causal conv caches its input, so the cached frames carry
them and each chunk exchanges only its own frames' edge rows.

    bands = RowBands.over()                           # all ranks (daemon.parallel.setup)
    vae = BandedVAE(wan_vae, bands)                   # same encode / decode as WanVAE
    video = vae.decode(latent)                        # every rank: the whole video

Every rank of the group must call encode/decode together with the same input (they hold the
same latent after sampling) and gets the whole result back (all-gather): the next clip's
conditioning frames are needed on every rank, the frames to write on rank 0.

Memory per rank, decode (encode alike): the weights (whole on each rank, ~0.5 GB in fp32 for
the real VAE) + the activations of one chunk's pass and the causal caches (2 frames per causal
conv), both ∝ the band's rows: ≈ 1/N of one rank's, plus 2 halo rows per padded conv + at the
mid attention the whole frame's keys/values (2C·h·w per frame, latent resolution) and the band's
scores ((h·w/N)·(h·w) at most) + the result: the band's video (∝ 1/N), then N band buffers and
the assembled whole video (2 × 3·F·H·W·4 bytes, ~0.8 GB for 81 frames at 480×832), which do
not shrink with N. Peak ≈ weights + activations/N + 2 × the video (one H100 decoding whole
frames peaks at 4.8 GiB at 640² and 10.4 GiB at 960² in bf16, docs/parallel.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from daemon.models.vae import WanVAE, check_video
from daemon.parallel.sequence import balanced_counts


@dataclass(frozen=True)
class RowBand:
    """This rank's band of a frame: latent rows [start, stop) of sum(counts), band `index` of
    the group's, top to bottom in group-rank order. Tensors have rows on axis -2 at any
    resolution: a band at k× the latent resolution holds k× its latent rows."""
    group: dist.ProcessGroup | None       # None: the default group
    counts: tuple[int, ...]               # latent rows of every band
    index: int

    @property
    def start(self) -> int:
        return sum(self.counts[:self.index])

    @property
    def rows(self) -> int:
        return self.counts[self.index]

    def split(self, x: torch.Tensor, scale: int = 1) -> torch.Tensor:
        """This band's rows of a whole-frame tensor at `scale`× the latent resolution."""
        return x.narrow(-2, self.start * scale, self.rows * scale)

    def halo(self, x: torch.Tensor, above: int, below: int) -> torch.Tensor:
        """x with the last `above` rows of the band above and the first `below` rows of the band
        below around it; zeros beyond the frame's top and bottom (the whole frame's padding)."""
        # Every rank sends what its neighbours need: its first `below` rows (for the band
        # above) and its last `above` rows (for the band below) — one all-gather, equal sizes.
        edges = torch.cat([x[..., :below, :], x[..., x.shape[-2] - above:, :]], dim=-2)
        pieces = self._all_gather(edges.contiguous())
        last = len(self.counts) - 1
        top = pieces[self.index - 1][..., below:, :] if self.index > 0 else \
            x.new_zeros(*x.shape[:-2], above, x.shape[-1])
        bottom = pieces[self.index + 1][..., :below, :] if self.index < last else \
            x.new_zeros(*x.shape[:-2], below, x.shape[-1])
        return torch.cat([top, x, bottom], dim=-2)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The whole frame from every band's x (same resolution on every rank)."""
        scale, rest = divmod(x.shape[-2], self.rows)
        if rest:
            raise ValueError(f"{x.shape[-2]} rows are not a band of {self.rows} latent rows")
        longest = max(self.counts) * scale
        # all_gather wants equal sizes: pad to the tallest band, cut each back to its own.
        pieces = self._all_gather(F.pad(x, (0, 0, 0, longest - x.shape[-2])).contiguous())
        return torch.cat([p[..., :n * scale, :] for p, n in zip(pieces, self.counts)], dim=-2)

    def _all_gather(self, x: torch.Tensor) -> list[torch.Tensor]:
        pieces = [torch.empty_like(x) for _ in self.counts]
        dist.all_gather(pieces, x, group=self.group)
        return pieces


@dataclass(frozen=True)
class RowBands:
    """How the VAE's frames split over the ranks of `group`: one band per rank."""
    group: dist.ProcessGroup | None       # None: the default group
    size: int
    rank: int                             # this rank's index in the group

    @classmethod
    def over(cls, group: dist.ProcessGroup | None = None) -> RowBands:
        """The bands of `group` (default: every rank). The process group must exist."""
        return cls(group, dist.get_world_size(group), dist.get_rank(group))

    def band(self, latent_rows: int) -> RowBand | None:
        """This rank's band of a frame `latent_rows` tall; None when there are fewer rows than
        ranks (then every rank computes the whole frame: tiny frames only)."""
        if self.size == 1 or latent_rows < self.size:
            return None
        return RowBand(self.group, balanced_counts(latent_rows, self.size), self.rank)


class BandedVAE:
    """WanVAE's encode and decode with each rank of `bands` computing one band; every rank gets
    the whole result. The same interface as WanVAE, so a pipeline takes either."""

    def __init__(self, vae: WanVAE, bands: RowBands):
        self.vae = vae
        self.bands = bands

    @property
    def z_dim(self) -> int:
        return self.vae.z_dim

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[3, 1+4k, H, W] in [-1, 1] → the whole scaled latent [z_dim, 1+k, H/8, W/8]."""
        factor = self.vae.model.spatial_factor
        check_video(video, factor)            # the whole video: a band of it may look valid
        band = self.bands.band(video.shape[-2] // factor)
        if band is None:
            return self.vae.encode(video)
        return band.gather(self.vae.encode(band.split(video, factor), band))

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """[z_dim, T, h, w] → the whole video [3, 1+4(T−1), 8h, 8w] clamped to [-1, 1]."""
        band = self.bands.band(latent.shape[-2])
        if band is None:
            return self.vae.decode(latent)
        return band.gather(self.vae.decode(band.split(latent), band))
