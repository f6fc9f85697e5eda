"""How the ranks are split for one DiT forward: sequence-parallel groups and guidance groups.

torchrun starts the ranks; `daemon.control.init_distributed` joins the default process group
(NCCL on GPUs, gloo on CPU) and makes the separate gloo group that carries job commands. This
module only carves the model's groups out of that world, through xfuser:

    world = guidance (CFG) degree × ulysses degree × ring degree

Ranks next to each other form one sequence-parallel (SP) group (they share one forward, each
holding a slice of the tokens); the SP groups form the guidance groups (each runs other
guidance passes of the same step). xfuser's `initialize_model_parallel` builds the groups and
also registers the ulysses/ring sub-groups with yunchang, which its ring attention reads.

xfuser is imported here lazily and only for more than one rank: a one-process daemon never
imports it (it refuses CPU-only torch and pulls in diffusers).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Guidance passes of one sampling step: cond, drop-text, uncond (MODEL.md). More guidance
# ranks than passes would idle.
MAX_GUIDANCE_DEGREE = 3


class ParallelConfigError(ValueError):
    """A parallel layout this model or machine cannot run; the message says what to change."""


@dataclass(frozen=True)
class ParallelLayout:
    """Degrees of parallelism; their product is the number of ranks."""
    world_size: int = 1
    ulysses: int = 1
    ring: int = 1
    guidance: int = 1

    @property
    def sequence(self) -> int:
        return self.ulysses * self.ring

    def check(self, num_heads: int, device_type: str) -> None:
        """Raise ParallelConfigError naming the fix, or return."""
        degrees = {"--ulysses_size": self.ulysses, "--ring_size": self.ring,
                   "guidance degree": self.guidance}
        for name, value in degrees.items():
            if value < 1:
                raise ParallelConfigError(f"{name} is {value}; it must be at least 1")
        if self.guidance * self.sequence != self.world_size:
            raise ParallelConfigError(
                f"guidance {self.guidance} × ulysses {self.ulysses} × ring {self.ring} = "
                f"{self.guidance * self.sequence}, but {self.world_size} rank(s) run: the product "
                f"must equal the number of ranks (e.g. --ulysses_size {self.world_size // self.guidance}"
                f" --ring_size 1)")
        if self.guidance > MAX_GUIDANCE_DEGREE:
            raise ParallelConfigError(
                f"guidance degree {self.guidance}: a step has at most {MAX_GUIDANCE_DEGREE} guidance "
                f"passes, so at most {MAX_GUIDANCE_DEGREE} guidance groups can be busy")
        if num_heads % self.ulysses:
            divisors = [d for d in range(1, self.sequence + 1)
                        if num_heads % d == 0 and self.sequence % d == 0]
            raise ParallelConfigError(
                f"Ulysses splits attention heads across ranks: {num_heads} heads do not divide by "
                f"--ulysses_size {self.ulysses}. Use a ulysses size in {divisors} and put the rest "
                f"into --ring_size (ulysses × ring = {self.sequence})")
        if self.ring > 1 and device_type != "cuda":
            # yunchang's ring update gets a zero log-sum-exp from the CPU math kernel
            # (shared/docs/ECOSYSTEM.md): wrong numbers, not an error, so refuse it here.
            raise ParallelConfigError(
                f"--ring_size {self.ring} needs CUDA GPUs (ring attention is wrong on CPU); "
                f"use --ulysses_size {self.sequence} --ring_size 1")


@dataclass(frozen=True)
class SequenceGroup:
    """The ranks that share one forward, each with a slice of the tokens."""
    group: dist.ProcessGroup | None      # all SP ranks (token gather, reference keys, extrema)
    ulysses_group: dist.ProcessGroup | None
    ring_group: dist.ProcessGroup | None
    ranks: tuple[int, ...]               # global ranks, in slice order
    rank: int                            # this rank's position in `ranks`
    ulysses: int = 1
    ring: int = 1

    @property
    def size(self) -> int:
        return len(self.ranks)


@dataclass(frozen=True)
class GuidanceGroup:
    """Ranks at the same slice position in different SP groups: each runs other guidance passes."""
    group: dist.ProcessGroup | None
    ranks: tuple[int, ...]
    rank: int

    @property
    def size(self) -> int:
        return len(self.ranks)


@dataclass(frozen=True)
class ParallelGroups:
    layout: ParallelLayout
    sequence: SequenceGroup
    guidance: GuidanceGroup

    @classmethod
    def single(cls) -> "ParallelGroups":
        """One rank: every collective is local."""
        return cls(ParallelLayout(), SequenceGroup(None, None, None, (0,), 0),
                   GuidanceGroup(None, (0,), 0))


class ParallelSetupError(RuntimeError):
    """xfuser could not be imported or initialised; the message says why and what to do."""


def init_parallel_groups(layout: ParallelLayout, *, rank: int, local_rank: int,
                         num_heads: int, device: torch.device) -> ParallelGroups:
    """Check `layout` and build its groups. The default process group must already exist
    (daemon.control.init_distributed); with one rank nothing is imported or created."""
    layout.check(num_heads, device.type)
    if layout.world_size == 1:
        return ParallelGroups.single()
    if not dist.is_initialized() or dist.get_world_size() != layout.world_size:
        raise ParallelSetupError(
            f"{layout.world_size} ranks expected but the default process group is "
            f"{'missing' if not dist.is_initialized() else dist.get_world_size()}: start the daemon "
            f"with torchrun (./run_daemon.sh) and call daemon.control.init_distributed first")
    backend = dist.get_backend()
    try:
        from xfuser.core.distributed import (get_cfg_group, get_sp_group,
                                             init_distributed_environment,
                                             initialize_model_parallel)
    except (ImportError, NotImplementedError) as exc:
        raise ParallelSetupError(
            f"sequence parallelism needs xfuser 0.4.5 with yunchang 0.6.4 on CUDA GPUs "
            f"(pip install xfuser==0.4.5 yunchang==0.6.4): {exc}") from exc
    init_distributed_environment(rank=rank, world_size=layout.world_size, local_rank=local_rank,
                                 backend=backend)
    initialize_model_parallel(classifier_free_guidance_degree=layout.guidance,
                              sequence_parallel_degree=layout.sequence,
                              ulysses_degree=layout.ulysses, ring_degree=layout.ring,
                              backend=backend)
    sp, cfg = get_sp_group(), get_cfg_group()
    if not hasattr(sp, "ulysses_group"):
        # xfuser builds the ulysses/ring groups only when it finds yunchang (and CUDA).
        raise ParallelSetupError("xfuser found no yunchang (long-context attention): "
                                 "pip install yunchang==0.6.4")
    sequence = SequenceGroup(group=sp.device_group, ulysses_group=sp.ulysses_group,
                             ring_group=sp.ring_group, ranks=tuple(sp.ranks),
                             rank=sp.rank_in_group, ulysses=layout.ulysses, ring=layout.ring)
    guidance = GuidanceGroup(group=cfg.device_group, ranks=tuple(cfg.ranks), rank=cfg.rank_in_group)
    return ParallelGroups(layout, sequence, guidance)


def destroy_parallel_groups() -> None:
    """Drop xfuser's groups (before the default group is destroyed at shutdown)."""
    if "xfuser.core.distributed" not in sys.modules:
        return
    from xfuser.core.distributed.parallel_state import destroy_model_parallel
    destroy_model_parallel()
