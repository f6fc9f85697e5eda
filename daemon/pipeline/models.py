"""The resident model bundle of the MultiTalk backend: every network loaded once and placed.

    bundle = ModelBundle.load(WeightPaths.under(weights_dir), Placement.for_device(device, ...))
    bundle.dit    MultiTalkDiT            the 14B diffusion transformer with the audio adapter
    bundle.text   T5TextEncoder           umt5-xxl; lives on the host, visits the GPU to encode
    bundle.clip   CLIPVisionEncoder       ViT-H image tower; same
    bundle.vae    WanVAE                  stays on the compute device (small, used every clip)
    bundle.audio  AudioFeatureExtractor   wav2vec2, float32 on the compute device
    bundle.identity                       what the clip cache keys on (weight files' sizes, times,
                                          and the LoRAs merged with their scales)

Placement follows the official service's flags:
  * T5 and CLIP live in pinned host memory and visit the GPU for each encode (`encoding(...)`):
    12 GB of GPU memory the sampling loop does not need (the official code keeps them resident
    unless offloading). Pinned, the 11 GB of T5 cross in about half a second.
  * `offload_model`: the DiT waits on the host between renders and during the VAE decode and
    moves to the GPU for sampling (official --offload_model True, the default on one GPU).
  * `persistent_dit_params` N (official --num_persistent_param_in_dit): the DiT's first N
    parameters live on the GPU; the transformer blocks past them stay in pinned host memory
    and lend a GPU copy of their weights to each call (WeightStreaming).
On a GPU the memory planner (daemon.models.memory) is consulted before anything is loaded.

Several ranks (docs/parallel.md): the DiT gets the rank's sequence layout, and with a device
mesh it (`dit_mesh`, --dit_fsdp) or the T5 encoder (`t5_mesh`, --t5_fsdp) is sharded per block
over the ranks. A sharded model stays on its device: its shard is what saves the memory that
offloading would.

`ModelBundle.random(...)` builds the same bundle with random weights and no weight files — at
the full 14B size for GPU benchmarks, or tiny for the CPU.

The DiT is built in one place, `build_dit`, where parallel execution (the sequence layout,
FSDP sharding) is handed in.
"""
from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers import models as tokenizer_models

from daemon.models.audio_proj import AUDIO_LAYERS
from daemon.models.clip import CLIP_CHECKPOINT, CLIPVisionConfig, CLIPVisionEncoder, load_clip_vision
from daemon.models.dit import DiTConfig, MultiTalkDiT
from daemon.models.dit_loader import load_dit, read_dit_config
from daemon.models.fp8 import convert_blocks_to_fp8, fp8_supported
from daemon.models.loader import WeightsError
from daemon.models.lora import LoraSpec
from daemon.models.memory import MemoryPlan, RunConfig, require_fit
from daemon.models.t5 import (T5_CHECKPOINT, T5_TOKENIZER_DIR, PromptTokenizer, T5Config,
                              T5Encoder, T5TextEncoder)
from daemon.models.vae import VAEConfig, VideoVAE, WanVAE
from daemon.models.wav2vec import AudioFeatureExtractor
from daemon.parallel.fsdp import load_dit_sharded, load_t5_sharded
from daemon.parallel.sequence import WholeSequence
from daemon.pipeline.clip_cache import files_identity
from shared.compose import BUCKETS
from shared.scene import ASPECTS

WAN_FOLDER = "Wan2.1-I2V-14B-480P"
WAV2VEC_FOLDER = "chinese-wav2vec2-base"
VAE_CHECKPOINT = "Wan2.1_VAE.pth"
HOST = torch.device("cpu")
# The compiled DiT blocks' graphs a daemon may need: one per video size (aspect preset ×
# resolution) and speaker count (one or two people take different paths).
DIT_GRAPH_VARIANTS = len(ASPECTS) * len(BUCKETS) * 2


@dataclass(frozen=True)
class WeightPaths:
    wan: Path            # Wan2.1-I2V folder with multitalk.safetensors beside the shards
    wav2vec: Path

    @classmethod
    def under(cls, weights: Path) -> "WeightPaths":
        return cls(Path(weights) / WAN_FOLDER, Path(weights) / WAV2VEC_FOLDER)

    def files(self) -> list[Path]:
        """Every file the bundle reads (for the cache identity)."""
        candidates = [*self.wan.glob("*.json"), *self.wan.glob("*.safetensors"),
                      *self.wan.glob("*.pth"), self.wan / T5_TOKENIZER_DIR / "tokenizer.json",
                      *self.wav2vec.glob("*.json"), *self.wav2vec.glob("*.safetensors")]
        return [p for p in candidates if p.is_file()]


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dit_dtype: torch.dtype
    text_dtype: torch.dtype
    clip_dtype: torch.dtype
    vae_dtype: torch.dtype
    audio_dtype: torch.dtype = torch.float32
    offload_model: bool = False
    persistent_dit_params: int | None = None

    @classmethod
    def for_device(cls, device: torch.device | str, *, offload_model: bool = False,
                   persistent_dit_params: int | None = None) -> "Placement":
        """On a GPU the official dtypes (DiT and T5 bf16, CLIP fp16) except the VAE, in bf16
        rather than float32: 1.7 s instead of 3.0 s per 640² clip decode on an H100, 3.8 instead
        of 6.9 at 960² (docs/parallel.md). float32 on the CPU, where nothing moves (it is all host
        memory already)."""
        device = torch.device(device)
        if device.type == "cpu":
            return cls(device, torch.float32, torch.float32, torch.float32, torch.float32)
        return cls(device, torch.bfloat16, torch.bfloat16, torch.float16, torch.bfloat16,
                   offload_model=offload_model, persistent_dit_params=persistent_dit_params)

    @property
    def moves(self) -> bool:
        """Whether models travel between host and device (never on a CPU-only run)."""
        return self.device.type != "cpu"

    @property
    def dit_home(self) -> torch.device:
        """Where the DiT is loaded: the host when it is offloaded or streamed."""
        if self.moves and (self.offload_model or self.persistent_dit_params is not None):
            return HOST
        return self.device


def build_dit(config: DiTConfig, placement: Placement, *, folder: Path | None = None,
              loras: Sequence[LoraSpec] = (), sequence=None, fsdp_mesh: DeviceMesh | None = None,
              fp8: bool = False, seed: int = 0) -> MultiTalkDiT:
    """The DiT from the released files in `folder`, or with random weights when it is None.

    `sequence`: how a forward's tokens are laid out over ranks (daemon.parallel.sequence;
    None = all on this device). `fsdp_mesh`: shard the DiT per block over these ranks, each
    rank reading only its own rows of the files (daemon.parallel.fsdp). `fp8`: the blocks'
    token-wide GEMMs in float8 (daemon.models.fp8; changes the output).
    """
    if fp8 and not (fp8_supported(placement.device) or placement.device.type == "cpu"):
        raise ValueError(f"--fp8 needs a GPU with FP8 tensor cores (Ada or Hopper, compute "
                         f"capability 8.9+); {placement.device} has none: drop --fp8")
    if fsdp_mesh is not None:
        if fp8:
            raise ValueError("--fp8 does not combine with --dit_fsdp yet: drop one of them")
        if folder is None or loras:
            raise ValueError("a sharded DiT is read from the released files, without LoRAs (the "
                             "merge needs whole weights)")
        if placement.dit_home != placement.device:
            raise ValueError("a sharded DiT stays on its device: build the Placement without "
                             "offload_model / persistent_dit_params")
        # Eager: the blocks' FSDP hooks gather and free the weights around each block.
        return load_dit_sharded(folder, device=placement.device, dtype=placement.dit_dtype,
                                mesh=fsdp_mesh, sequence=sequence)
    if folder is not None:
        model = load_dit(folder, device=placement.dit_home, dtype=placement.dit_dtype, loras=loras,
                         sequence=sequence)
    else:
        with torch.device("meta"):
            model = MultiTalkDiT(config, sequence=sequence)
        # Random numbers are drawn on the device (fast), then the model goes home.
        model = init_random(model, placement.device, placement.dit_dtype, seed)
        move_module(model, placement.dit_home)
    if fp8:
        convert_blocks_to_fp8(model.blocks)
    if compiles_blocks(placement, model.sequence):
        allow_compiled_variants(2 * DIT_GRAPH_VARIANTS)
        model.compile_blocks()
    return model


def allow_compiled_variants(count: int) -> None:
    """Let torch.compile keep `count` graphs per compiled function. The 40 blocks share one
    code object, and past dynamo's default limit (8) every new size would run eager — about a
    quarter slower, for the rest of the daemon's life. Never lowers the limit."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), count))


def compiles_blocks(placement: Placement, sequence) -> bool:
    """Whether the DiT's blocks are torch.compiled: when the whole DiT computes on one GPU —
    resident, or offloaded between phases (compiled graphs take the parameters as inputs, so
    moving their storage is fine) — to fuse the elementwise work between GEMMs and attention
    (docs/performance.md). Streamed blocks (weights swapped in around each call) and CPU models
    stay eager, and so do blocks whose attention is split over ranks: compiling around their
    collectives is not yet measured."""
    return (placement.device.type == "cuda" and placement.persistent_dit_params is None
            and isinstance(sequence, WholeSequence))


def init_random(model: nn.Module, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """Materialise a meta-device model on `device` in `dtype` with random weights: tensors
    N(0, 1/fan_in), per-channel weights 1, biases 0. For speed and memory measurements."""
    model = model.to(dtype).to_empty(device=device)    # cast on meta first: no fp32 copy
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.numel() == param.shape[0]:         # one value per channel
                param.fill_(1.0 if name.endswith(("weight", "gamma")) else 0.0)
            else:
                param.normal_(0.0, (param.numel() // param.shape[0]) ** -0.5, generator=generator)
    return model.eval().requires_grad_(False)


class HostCopy:
    """Parameters kept in host memory (pinned on CUDA, so copies run at full PCIe speed) that
    visit the device: `to_device()` copies them over, `to_host()` drops the device copies. The
    host copy is the master and never changes (inference only), so going back costs nothing.
    Parameters whose id is in `skip` are left alone (they are streamed, see WeightStreaming).
    """

    def __init__(self, module: nn.Module, device: torch.device, skip: frozenset[int] = frozenset()):
        if any(True for _ in module.buffers()):
            raise ValueError(f"{type(module).__name__} has buffers; HostCopy moves parameters only")
        self.device = device
        self._params: list[tuple[nn.Parameter, torch.Tensor]] = []
        with torch.no_grad():
            for p in module.parameters():
                if id(p) not in skip:
                    host = _pinned(p.data.to(HOST), device)
                    p.data = host
                    self._params.append((p, host))

    def to_device(self) -> None:
        for p, host in self._params:
            p.data = host.to(self.device, non_blocking=True)

    def to_host(self) -> None:
        for p, host in self._params:
            p.data = host


class WeightStreaming:
    """The official low-VRAM mode (num_persistent_param_in_dit): the DiT's parameters up to the
    budget live on the GPU; the transformer blocks past it keep their weights in pinned host
    memory and get a device copy for the duration of each call.

    Counting follows the official walk in spirit (parameters in definition order, the first N
    stay): the parameters outside the blocks come first (~0.3 B of 18.9 B: embeddings, audio
    adapter projection, head) and always stay, then the blocks in order. The unit is a whole
    block because the block's forward is what is called: some layers' weights are read directly
    (linear_fp32, the patch embedding as a GEMM), so per-layer hooks would miss them.
    """

    def __init__(self, blocks: Sequence[nn.Module], resident_params: int, budget: int,
                 device: torch.device):
        self.device = device
        self.streamed: list[nn.Module] = []
        self._host: dict[int, torch.Tensor] = {}
        total = resident_params
        with torch.no_grad():
            for block in blocks:
                total += sum(p.numel() for p in block.parameters())
                if total <= budget:
                    continue
                self.streamed.append(block)
                for p in block.parameters():
                    self._host[id(p)] = _pinned(p.data.to(HOST), device)
                    p.data = self._host[id(p)]
                block.register_forward_pre_hook(self._lend)
                block.register_forward_hook(self._take_back)
        self.param_ids = frozenset(self._host)

    @classmethod
    def for_dit(cls, dit: MultiTalkDiT, budget: int, device: torch.device) -> "WeightStreaming":
        in_blocks = sum(p.numel() for p in dit.blocks.parameters())
        outside = sum(p.numel() for p in dit.parameters()) - in_blocks
        return cls(dit.blocks, outside, budget, device)

    def _lend(self, block: nn.Module, args) -> None:
        for p in block.parameters():
            p.data = self._host[id(p)].to(self.device, non_blocking=True)

    def _take_back(self, block: nn.Module, args, output) -> None:
        for p in block.parameters():
            p.data = self._host[id(p)]

    @property
    def streamed_params(self) -> int:
        return sum(p.numel() for m in self.streamed for p in m.parameters())


def is_sharded(module: nn.Module) -> bool:
    """Whether FSDP shards `module` over the ranks (it then never moves)."""
    return isinstance(module, FSDPModule)


def bundle_identity(paths: WeightPaths, loras: Sequence[LoraSpec], fp8: bool = False) -> str:
    """What the clip cache keys on: the weight files, the LoRAs merged with their scales (the
    merge is a sum: their order does not matter) and whether the GEMMs run in FP8."""
    files = files_identity([*paths.files(), *(spec.path for spec in loras)])
    if not loras and not fp8:
        return files
    scales = sorted(f"{Path(spec.path).name}={spec.scale!r}" for spec in loras)
    return hashlib.sha256("\0".join([files, *scales, *(["fp8"] if fp8 else [])]).encode()).hexdigest()[:32]


def _pinned(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor.pin_memory() if device.type == "cuda" else tensor


def move_module(module: nn.Module, device: torch.device) -> None:
    """Every parameter of `module` to `device` (models here hold no buffers)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.device != device:
                p.data = p.data.to(device)


@dataclass
class ModelBundle:
    dit: MultiTalkDiT
    text: T5TextEncoder
    clip: CLIPVisionEncoder
    vae: WanVAE
    audio: AudioFeatureExtractor
    placement: Placement
    identity: str
    memory_plan: MemoryPlan | None = None
    loras: tuple[LoraSpec, ...] = ()        # merged into the DiT
    fp8: bool = False                       # the DiT's token-wide GEMMs run in float8
    streaming: WeightStreaming | None = field(default=None, init=False)
    _homes: dict[int, HostCopy] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        p = self.placement
        if not p.moves:
            return
        # Encoders live on the host and visit the GPU to encode; a sharded one stays.
        for module in (self.text.encoder, self.clip):
            if not is_sharded(module):
                self._homes[id(module)] = HostCopy(module, p.device)
        if p.persistent_dit_params is not None:
            self.streaming = WeightStreaming.for_dit(self.dit, p.persistent_dit_params, p.device)
        if p.offload_model:
            self._homes[id(self.dit)] = HostCopy(self.dit, p.device, self._streamed_ids())
        elif self.streaming is not None:
            # The persistent part lives on the GPU for good.
            with torch.no_grad():
                for param in self.dit.parameters():
                    if id(param) not in self.streaming.param_ids:
                        param.data = param.data.to(p.device)

    # -- construction
    @classmethod
    def load(cls, paths: WeightPaths, placement: Placement, *, run: RunConfig | None = None,
             loras: Sequence[LoraSpec] = (), sequence=None, dit_mesh: DeviceMesh | None = None,
             t5_mesh: DeviceMesh | None = None, fp8: bool = False) -> "ModelBundle":
        """The bundle from the released files. On a GPU the memory planner checks `run` (sizes,
        parallel flags) first and raises MemoryPlanError naming configurations that fit.

        `loras` are merged into the DiT; `sequence` is the DiT's token layout over ranks;
        `dit_mesh` / `t5_mesh` shard the DiT / the T5 encoder per block over those ranks (FSDP);
        `fp8` runs the DiT's token-wide GEMMs in float8.
        """
        config = read_dit_config(paths.wan)
        plan = None
        if placement.device.type == "cuda":
            total = torch.cuda.get_device_properties(placement.device).total_memory
            run = dataclasses.replace(run or RunConfig(), gpu_bytes=total,
                                      offload_model=placement.offload_model,
                                      persistent_dit_params=placement.persistent_dit_params)
            plan = require_fit(config, run)
        encoders_on = HOST if placement.moves else placement.device
        if t5_mesh is not None:
            encoder = load_t5_sharded(paths.wan / T5_CHECKPOINT, device=placement.device,
                                      dtype=placement.text_dtype, mesh=t5_mesh)
            text = T5TextEncoder(encoder, PromptTokenizer.from_folder(paths.wan / T5_TOKENIZER_DIR,
                                                                      config.text_len))
        else:
            text = T5TextEncoder.load(paths.wan, device=encoders_on, dtype=placement.text_dtype,
                                      text_len=config.text_len)
        clip = load_clip_vision(paths.wan / CLIP_CHECKPOINT, device=encoders_on,
                                dtype=placement.clip_dtype)
        audio = AudioFeatureExtractor(paths.wav2vec, device=placement.device,
                                      dtype=placement.audio_dtype)
        check_compatible(config, text, clip, audio, paths)
        vae = WanVAE.load(paths.wan / VAE_CHECKPOINT, device=placement.device,
                          dtype=placement.vae_dtype)
        dit = build_dit(config, placement, folder=paths.wan, loras=loras, sequence=sequence,
                        fsdp_mesh=dit_mesh, fp8=fp8)
        return cls(dit, text, clip, vae, audio, placement, bundle_identity(paths, loras, fp8), plan,
                   tuple(loras), fp8)

    @classmethod
    def random(cls, sizes: "RandomSizes", placement: Placement, *, sequence=None,
               fp8: bool = False, seed: int = 0) -> "ModelBundle":
        """The bundle with random weights of `sizes`; no weight file is read. Weights are drawn
        on the device and the encoders then moved to the host (see __post_init__)."""
        encoders_on = placement.device
        with torch.device("meta"):
            t5, clip, vae = T5Encoder(sizes.t5), CLIPVisionEncoder(sizes.clip), VideoVAE(sizes.vae)
        text = T5TextEncoder(init_random(t5, encoders_on, placement.text_dtype, seed + 1),
                             PromptTokenizer(synthetic_tokenizer(), sizes.dit.text_len))
        clip = init_random(clip, encoders_on, placement.clip_dtype, seed + 2)
        vae = WanVAE(init_random(vae, placement.device, placement.vae_dtype, seed + 3),
                     placement.device, placement.vae_dtype)
        # The feature extractor reads a folder (config + preprocessor + weights): write one.
        with tempfile.TemporaryDirectory(prefix="duet-wav2vec-") as folder:
            write_random_wav2vec(Path(folder), sizes.wav2vec, seed + 4)
            audio = AudioFeatureExtractor(Path(folder), device=placement.device,
                                          dtype=placement.audio_dtype)
        dit = build_dit(sizes.dit, placement, sequence=sequence, fp8=fp8, seed=seed)
        identity = f"random:{sizes.label}:{seed}" + (":fp8" if fp8 else "")
        return cls(dit, text, clip, vae, audio, placement, identity, fp8=fp8)

    # -- placement during a render
    @contextmanager
    def encoding(self, module: nn.Module) -> Iterator[None]:
        """`module` (T5's encoder or CLIP) on the device for the block, back on the host after."""
        home = self._homes.get(id(module))
        if home is not None:
            home.to_device()
        try:
            yield
        finally:
            if home is not None:
                home.to_host()
                torch.cuda.empty_cache()

    def dit_to_device(self) -> None:
        """Before sampling: a no-op unless the DiT is offloaded."""
        home = self._homes.get(id(self.dit))
        if home is not None:
            home.to_device()

    def dit_to_host(self) -> None:
        """Before the VAE decode and between renders, when the DiT is offloaded."""
        home = self._homes.get(id(self.dit))
        if home is not None:
            home.to_host()
            torch.cuda.empty_cache()

    def _streamed_ids(self) -> frozenset[int]:
        return self.streaming.param_ids if self.streaming is not None else frozenset()

    def describe(self) -> str:
        p = self.placement
        billions = sum(t.numel() for t in self.dit.parameters()) / 1e9
        parts = [f"MultiTalk DiT ({billions:.1f} B parameters, {str(p.dit_dtype).removeprefix('torch.')}) "
                 f"on {p.device}"]
        if self.identity.startswith("random:"):
            parts.insert(0, "RANDOM WEIGHTS (renders are noise)")
        if p.offload_model:
            parts.append("offloaded to the host between phases")
        if self.streaming is not None:
            parts.append(f"{self.streaming.streamed_params / 1e9:.1f} B parameters streamed "
                         f"from the host")
        if self.fp8:
            parts.append("FP8 GEMMs")
        if self.loras:
            parts.append("LoRA " + ", ".join(describe_lora(spec) for spec in self.loras))
        return ", ".join(parts)


def describe_lora(spec: LoraSpec) -> str:
    return f"{Path(spec.path).name} ×{spec.scale:g}"


def check_compatible(dit: DiTConfig, text: T5TextEncoder, clip: CLIPVisionEncoder,
                     audio: AudioFeatureExtractor, paths: WeightPaths) -> None:
    """The encoders' output widths must be what the DiT reads; a mismatch means files from
    different downloads."""
    if text.encoder.config.dim != dit.text_dim:
        raise WeightsError(f"{paths.wan / T5_CHECKPOINT} gives {text.encoder.config.dim}-wide text "
                           f"features, the DiT reads {dit.text_dim} — run weights/download.sh wan")
    if clip.config.dim != dit.clip_dim:
        raise WeightsError(f"{paths.wan / CLIP_CHECKPOINT} gives {clip.config.dim}-wide image "
                           f"features, the DiT reads {dit.clip_dim} — run weights/download.sh wan")
    if (audio.num_layers, audio.hidden_size) != (AUDIO_LAYERS, dit.output_dim):
        raise WeightsError(f"{paths.wav2vec} gives {audio.num_layers}×{audio.hidden_size} audio "
                           f"features, the DiT's audio adapter reads {AUDIO_LAYERS}×"
                           f"{dit.output_dim} — run weights/download.sh wav2vec")


# ---------------------------------------------------------------------------------------------
# Random bundles

_REAL_VAE = VAEConfig(dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
                      temporal_downsample=(False, True, True))
# wav2vec2-base's layout (12 layers × 768, what audio_proj reads) with thin convolutions and FFN.
TINY_WAV2VEC = {"intermediate_size": 32, "conv_dim": [32] * 7, "num_conv_pos_embeddings": 4,
                "num_conv_pos_embedding_groups": 16}


@dataclass(frozen=True)
class RandomSizes:
    label: str
    dit: DiTConfig
    t5: T5Config
    clip: CLIPVisionConfig
    vae: VAEConfig
    wav2vec: dict            # Wav2Vec2Config fields that differ from wav2vec2-base

    @classmethod
    def full(cls) -> "RandomSizes":
        """The released sizes: multitalk-14B, umt5-xxl, ViT-H/14, the Wan VAE, wav2vec2-base."""
        return cls("full", DiTConfig(),
                   T5Config(vocab_size=256384, dim=4096, dim_attn=4096, dim_ffn=10240,
                            num_heads=64, num_layers=24, num_buckets=32),
                   CLIPVisionConfig(image_size=224, patch_size=14, dim=1280, mlp_dim=5120,
                                    num_heads=16, num_layers=32),
                   _REAL_VAE, {})

    @classmethod
    def tiny(cls) -> "RandomSizes":
        """Small enough for the CPU. The widths the DiT's inputs fix stay (T5 4096, CLIP 1280,
        wav2vec2 12 × 768), with one or two layers and thin inner sizes."""
        return cls("tiny",
                   DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_len=32,
                             intermediate_dim=8),
                   T5Config(vocab_size=64, dim=4096, dim_attn=32, dim_ffn=32, num_heads=2,
                            num_layers=1, num_buckets=32),
                   CLIPVisionConfig(image_size=28, patch_size=14, dim=1280, mlp_dim=32,
                                    num_heads=16, num_layers=2),
                   dataclasses.replace(_REAL_VAE, dim=4), TINY_WAV2VEC)


def write_random_wav2vec(folder: Path, overrides: dict, seed: int) -> None:
    """A Wav2Vec2Model folder (config.json, preprocessor_config.json, model.safetensors) with
    random weights: wav2vec2-base's config with `overrides`."""
    from safetensors.torch import save_file
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(**overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Vec2Model(config)
    folder.mkdir(parents=True, exist_ok=True)
    config.to_json_file(folder / "config.json")
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                             do_normalize=True, return_attention_mask=False).save_pretrained(folder)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


SYNTHETIC_PIECES = ("▁the", "▁a", "▁people", "▁talk", "▁speak", "▁look", "▁light", "▁shot")


def synthetic_tokenizer(pieces: Sequence[str] = SYNTHETIC_PIECES) -> Tokenizer:
    """A tokenizer laid out as umt5's (<pad> 0, </s> 1, <unk> 2, `$A </s>`) with a handful of
    pieces (ids 3, 4, … in order): enough to run the T5 encoder at its real length without the
    released file."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(p, -1.0) for p in pieces]
    tokenizer = Tokenizer(tokenizer_models.Unigram(vocab, unk_id=2))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                             special_tokens=[("</s>", 1)])
    return tokenizer
