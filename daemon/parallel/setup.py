"""From the daemon's flags to this rank's parallel pieces for the MultiTalk models.

    plan = ParallelPlan.from_settings(settings)          # which layout, which FSDP (no side effects)
    parts = build_parallelism(plan, rank=…, local_rank=…, device=…, num_heads=…, dtype=…)
    ModelBundle.load(…, sequence=parts.sequence, dit_mesh=parts.dit_mesh, t5_mesh=parts.t5_mesh)
    MultiTalkPipeline(…, guidance=parts.guidance, vae_bands=parts.vae_bands)

`build_parallelism` runs on every rank in the same order (it creates process groups), after
daemon.control.init_distributed has joined the default group and made the control group. With
one rank it creates nothing and imports no xfuser: the whole sequence on one device, no
sharding, the guidance passes one after another, the VAE on whole frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.device_mesh import DeviceMesh

from daemon.config import Settings
from daemon.parallel.fsdp import world_mesh
from daemon.parallel.groups import ParallelGroups, ParallelLayout, init_parallel_groups
from daemon.parallel.guidance import GuidanceRunner
from daemon.parallel.sequence import SequenceParallel, WholeSequence, sequence_layout
from daemon.parallel.vae_bands import RowBands


@dataclass(frozen=True)
class ParallelPlan:
    """What the flags ask for: ranks = guidance × ulysses × ring, and which models FSDP shards."""
    layout: ParallelLayout
    dit_fsdp: bool = False
    t5_fsdp: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> "ParallelPlan":
        layout = ParallelLayout(world_size=settings.world_size, ulysses=settings.ulysses_size,
                                ring=settings.ring_size, guidance=settings.cfg_parallel)
        return cls(layout, dit_fsdp=settings.dit_fsdp, t5_fsdp=settings.t5_fsdp)

    @property
    def lockstep(self) -> bool:
        """Every rank must run as many DiT forwards as every other: FSDP shards the DiT over
        ALL ranks, so its per-block all-gathers span the guidance groups."""
        return self.dit_fsdp and self.layout.guidance > 1

    def describe(self) -> str:
        layout = self.layout
        if layout.world_size == 1:
            return "one device"
        parts = [f"{layout.world_size} ranks: guidance {layout.guidance} × Ulysses "
                 f"{layout.ulysses} × ring {layout.ring}"]
        sharded = [name for name, on in (("DiT", self.dit_fsdp), ("T5", self.t5_fsdp)) if on]
        if sharded:
            parts.append(f"{' and '.join(sharded)} sharded (FSDP)")
        return ", ".join(parts)


@dataclass(frozen=True)
class Parallelism:
    """This rank's pieces of the plan."""
    plan: ParallelPlan
    groups: ParallelGroups
    sequence: WholeSequence | SequenceParallel     # the DiT's token layout over its SP group
    dit_mesh: DeviceMesh | None                    # FSDP mesh of the DiT; None = whole on each rank
    t5_mesh: DeviceMesh | None
    guidance: GuidanceRunner
    # The VAE's row bands: over ALL ranks, not just the SP group — after each sampling step
    # every rank holds the same latent (SP gathers it, CFG-parallel broadcasts the passes), so
    # guidance groups need not decode the same frames twice. None: one rank, whole frames.
    vae_bands: RowBands | None = None


def build_parallelism(plan: ParallelPlan, *, rank: int, local_rank: int, device: torch.device,
                      num_heads: int, dtype: torch.dtype) -> Parallelism:
    """Check the plan against the model (`num_heads`) and the device, then build the groups.
    Raises daemon.parallel.groups.ParallelConfigError / ParallelSetupError naming the fix."""
    groups = init_parallel_groups(plan.layout, rank=rank, local_rank=local_rank,
                                  num_heads=num_heads, device=device)
    mesh = world_mesh(device) if plan.dit_fsdp or plan.t5_fsdp else None
    return Parallelism(plan=plan, groups=groups,
                       sequence=sequence_layout(groups.sequence, device, dtype),
                       dit_mesh=mesh if plan.dit_fsdp else None,
                       t5_mesh=mesh if plan.t5_fsdp else None,
                       guidance=GuidanceRunner(groups.guidance, lockstep=plan.lockstep),
                       vae_bands=RowBands.over() if plan.layout.world_size > 1 else None)
