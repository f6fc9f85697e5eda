"""Memory planner: predict peak GPU memory per rank and host memory before loading anything.

The daemon calls `plan(...)` at start-up and refuses a configuration that cannot fit, listing
configurations that would (`suggest`). Every number is derived from the model configs (exact
parameter counts, checked against real checkpoints in tests) and the run's shapes; the
activation model is the largest set of tensors alive at once inside one DiT block, calibrated
against measurements in bench/results (see docs/performance.md).

The classic trap this exists for: FSDP that wraps the DiT as ONE unit must unshard all 18.7 B
parameters on every rank during the forward (37 GB in bf16) — a 24 GB card can never run it,
however many GPUs share the shards. We wrap per block, so the unshard peak is two blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from daemon.models.dit import DiTConfig

GiB = 1024 ** 3

# Fixed by the released checkpoints, not by any config file.
WAV2VEC_LAYERS, WAV2VEC_DIM = 12, 768     # audio_proj's input: 12 hidden layers × 768
CLIP_TOKENS = 257
CUDA_CONTEXT = 1.0 * GiB                  # CUDA context + allocator slack seen on H100/H200


def dit_block_params(cfg: DiTConfig) -> int:
    """Parameters of one DiT block, exactly as the released state_dict holds them."""
    d, f, a = cfg.dim, cfg.ffn_dim, cfg.output_dim
    linear = lambda i, o: i * o + o  # noqa: E731
    self_attn = 4 * linear(d, d) + 2 * d                      # q k v o + RMSNorm q, k
    cross_attn = 6 * linear(d, d) + 3 * d                     # q k v o k_img v_img + 3 norms
    audio = linear(d, d) + linear(a, 2 * d) + linear(d, d)    # q_linear, kv_linear, proj
    return (6 * d + self_attn + 2 * d + cross_attn + linear(d, f) + linear(f, d)
            + audio + 2 * d)                                  # modulation, norm3, ffn, norm_x


def fp8_block_saving(cfg: DiTConfig, param_bytes: int) -> int:
    """Bytes one block saves with --fp8 (daemon.models.fp8): its token-wide linears' weights in
    one byte each instead of `param_bytes`, plus a float32 scale per output channel."""
    d, f = cfg.dim, cfg.ffn_dim
    weights = 8 * d * d + 2 * d * f              # self q k v o, cross q o, audio q proj; FFN
    out_channels = 9 * d + f
    return weights * (param_bytes - 1) - 4 * out_channels


def dit_params(cfg: DiTConfig) -> int:
    """All DiT parameters: embeddings, head and audio_proj, plus every block."""
    d, i = cfg.dim, cfg.intermediate_dim
    linear = lambda a, b: a * b + b  # noqa: E731
    p = math.prod(cfg.patch_size)
    window_vf = cfg.audio_window + cfg.vae_scale - 1
    audio_in = WAV2VEC_LAYERS * WAV2VEC_DIM
    top = (d * cfg.in_dim * p + d                                      # patch_embedding
           + linear(cfg.text_dim, d) + linear(d, d)                    # text_embedding
           + linear(cfg.freq_dim, d) + linear(d, d)                    # time_embedding
           + linear(d, 6 * d)                                          # time_projection
           + 2 * cfg.clip_dim + linear(cfg.clip_dim, cfg.clip_dim) + linear(cfg.clip_dim, d) + 2 * d
           + linear(d, cfg.out_dim * p) + 2 * d                        # head
           + linear(cfg.audio_window * audio_in, i) + linear(window_vf * audio_in, i)
           + linear(i, i) + linear(i, cfg.context_tokens * cfg.output_dim)
           + 2 * cfg.output_dim)                                       # audio_proj
    return top + cfg.num_layers * dit_block_params(cfg)


# Parameter counts of the other released models (from their checkpoints' tensor shapes).
T5_XXL_PARAMS = 5_680_910_336        # umt5-xxl encoder: 256384·4096 + 24 blocks
CLIP_VISUAL_PARAMS = 632_076_800     # ViT-H/14 visual tower (MultiTalk runs 31 of 32 blocks)
VAE_PARAMS = 126_892_531
WAV2VEC_PARAMS = 94_395_392


@dataclass(frozen=True)
class RunConfig:
    width: int = 832
    height: int = 480
    frames: int = 81
    world_size: int = 1
    dit_fsdp: bool = False
    t5_fsdp: bool = False
    offload_model: bool = False
    persistent_dit_params: int | None = None    # None = all DiT parameters stay on the GPU
    fp8: bool = False                           # --fp8: the blocks' token-wide weights in e4m3
    cfg_parallel: int = 1                       # guidance groups: the sequence splits over the rest
    param_bytes: int = 2                        # bf16
    act_bytes: int = 2
    gpu_bytes: int = 80 * GiB
    ranks_per_host: int | None = None           # defaults to world_size

    def label(self) -> str:
        parts = [f"{self.width}x{self.height}", f"{self.world_size} GPU"]
        parts += [name for name, on in (("--dit_fsdp", self.dit_fsdp), ("--t5_fsdp", self.t5_fsdp),
                                         ("--offload_model", self.offload_model)) if on]
        if self.persistent_dit_params is not None:
            parts.append(f"--num_persistent_param_in_dit {self.persistent_dit_params}")
        if self.fp8:
            parts.append("--fp8")
        if self.cfg_parallel > 1:
            parts.append(f"--cfg_parallel {self.cfg_parallel}")
        return " ".join(parts)


@dataclass(frozen=True)
class MemoryPlan:
    config: RunConfig
    tokens: int                 # DiT sequence length of one clip
    gpu_parts: dict[str, int]   # bytes per rank at the sampling peak, by part
    gpu_peak: int               # bytes per rank, the largest of the phases
    host_per_rank: int
    host_total: int

    @property
    def fits(self) -> bool:
        return self.gpu_peak <= self.config.gpu_bytes

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.1f}" for k, v in self.gpu_parts.items())
        return (f"{self.config.label()}: peak {self.gpu_peak / GiB:.1f} GiB/GPU of "
                f"{self.config.gpu_bytes / GiB:.0f} ({parts}); host {self.host_total / GiB:.1f} GiB")


def dit_tokens(shape: DiTConfig, width: int, height: int, frames: int) -> int:
    lat_frames = (frames - 1) // 4 + 1
    return lat_frames * (height // (8 * shape.patch_size[1])) * (width // (8 * shape.patch_size[2]))


def plan(shape: DiTConfig, run: RunConfig) -> MemoryPlan:
    w = run.world_size
    tokens = dit_tokens(shape, run.width, run.height, run.frames)
    sequence_ranks = max(1, w // run.cfg_parallel)   # each guidance group holds the whole sequence
    local = math.ceil(tokens / sequence_ranks)       # sequence parallel: each rank holds its slice
    d, f = shape.dim, shape.ffn_dim
    pb, ab = run.param_bytes, run.act_bytes

    saving = fp8_block_saving(shape, pb) if run.fp8 else 0
    dit_total = dit_params(shape) * pb - shape.num_layers * saving
    block = dit_block_params(shape) * pb - saving
    if run.persistent_dit_params is not None:
        # Offloaded blocks stream in one at a time; a second one is prefetched.
        resident = min(dit_total, run.persistent_dit_params * pb)
        dit_gpu, dit_host = resident + 2 * block, dit_total - resident
    elif run.dit_fsdp and w > 1:
        dit_gpu, dit_host = dit_total // w + 2 * block, 0   # shards + unsharded current/next block
    else:
        dit_gpu, dit_host = dit_total, 0

    # The largest set alive inside a block: self-attention holds x, norm(x), q, k, v, out
    # (+ q, k, v again as all-to-all buffers under Ulysses); the FFN holds x, norm(x) and two
    # [tokens, ffn] tensors (the GELU input and output).
    attn = (6 + (3 if sequence_ranks > 1 else 0)) * d
    ffn = 2 * d + 2 * f
    activations = local * max(attn, ffn) * ab
    context = (CLIP_TOKENS + 512) * d * ab * 4          # embedded context + its K/V
    latents = 16 * tokens * 4 * 4 * 6                   # fp32 latent, noise, 3 predictions, y

    t5 = T5_XXL_PARAMS * pb // (w if run.t5_fsdp else 1)
    clip = CLIP_VISUAL_PARAMS * pb
    vae = VAE_PARAMS * pb
    wav2vec = WAV2VEC_PARAMS * 4
    encoders_resident = 0 if run.offload_model else t5 + clip + vae + wav2vec

    sampling = {"dit": dit_gpu, "activations": activations + context + latents,
                "encoders": encoders_resident, "cuda": int(CUDA_CONTEXT)}
    # Encoding phase: T5 and CLIP on the GPU next to the (resident part of the) DiT.
    encoding = dit_gpu + t5 + clip + wav2vec + int(CUDA_CONTEXT)
    # Decoding: the VAE decoder's widest level holds a few [C, H, W] maps per frame plus
    # the decoded clip in fp32.
    decode = (dit_gpu + vae + 8 * 384 * (run.height // 2) * (run.width // 2) * ab
              + 3 * run.frames * run.height * run.width * 4 + int(CUDA_CONTEXT))
    gpu_peak = max(sum(sampling.values()), encoding, decode)

    host = dit_host + ((t5 + clip) if run.offload_model else 0) + 512 * 1024 ** 2
    ranks_here = run.ranks_per_host or w
    return MemoryPlan(run, tokens, sampling, gpu_peak, host, host * ranks_here)


def suggest(shape: DiTConfig, run: RunConfig, max_gpus: int = 8, limit: int = 5) -> list[MemoryPlan]:
    """Configurations that fit this GPU size, the least intrusive (fastest) first."""
    candidates = []
    for gpus in sorted({run.world_size, *[g for g in (1, 2, 4, 8) if g <= max_gpus]}):
        for dit_fsdp in (False, True):
            for t5_fsdp in (False, True):
                for offload in (False, True):
                    if gpus == 1 and (dit_fsdp or t5_fsdp):
                        continue
                    cfg = replace(run, world_size=gpus, dit_fsdp=dit_fsdp, t5_fsdp=t5_fsdp,
                                  offload_model=offload, persistent_dit_params=None,
                                  ranks_per_host=None, cfg_parallel=1)
                    candidates.append(cfg)
    # Block offloading on one GPU: the slowest option, for small cards.
    for persistent in (12_000_000_000, 6_000_000_000, 0):
        candidates.append(replace(run, world_size=1, dit_fsdp=False, t5_fsdp=False,
                                  offload_model=True, persistent_dit_params=persistent,
                                  cfg_parallel=1))
    plans = [plan(shape, c) for c in candidates]

    def cost(p: MemoryPlan) -> tuple:
        c = p.config
        return (c.persistent_dit_params is not None, c.world_size != run.world_size,
                c.world_size, c.offload_model, c.dit_fsdp, c.t5_fsdp)

    return sorted((p for p in plans if p.fits), key=cost)[:limit]


class MemoryPlanError(RuntimeError):
    pass


def require_fit(shape: DiTConfig, run: RunConfig) -> MemoryPlan:
    """The plan, or a MemoryPlanError naming the peak and configurations that would fit."""
    p = plan(shape, run)
    if p.fits:
        return p
    options = suggest(shape, run)
    lines = [f"this configuration needs {p.gpu_peak / GiB:.1f} GiB per GPU but the GPU has "
             f"{run.gpu_bytes / GiB:.0f} GiB ({p.describe()})."]
    if options:
        lines.append("Configurations that fit:")
        lines += [f"  {o.describe()}" for o in options]
    else:
        lines.append("No configuration fits this GPU; use a GPU with more memory or the draft render.")
    raise MemoryPlanError("\n".join(lines))
