"""Run the guidance passes of one sampling step, one after another or CFG-parallel.

Each step of MultiTalk runs the DiT 2 or 3 times on the same latent (cond, drop-text, uncond —
or cond, drop-audio with a distilled LoRA) and mixes the predictions. CFG-parallel gives each
pass to another group of ranks: pass i runs on guidance rank i mod G, and the owner of each
finished pass broadcasts it to the others, so every rank ends the step with every prediction.

    runner = GuidanceRunner(groups.guidance, lockstep=dit_fsdp)
    cond, drop_text, uncond = runner.run(lambda i: dit(**pass_inputs[i]), passes=3, like=latent)

When it wins (docs/parallel.md has the numbers): no communication inside a forward — only one
latent-sized broadcast per pass — so it scales perfectly up to the number of passes where
sequence parallelism is bound by its two all-to-alls per block: small resolutions or short
clips (at 4,096 tokens Ulysses-2 is slower than one GPU), 3 GPUs (40 heads do not split 3
ways), and 2 GPUs in 2-pass LoRA mode (2.0× vs ~1.9× for Ulysses-2). With 3 passes on 2
guidance ranks it is 1.5× at best (2 rounds for 3 passes), so at 480p/720p Ulysses-2 (1.9×)
wins there. Each guidance rank holds the whole DiT (or its FSDP shard).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from daemon.parallel.groups import GuidanceGroup


class GuidanceRunner:
    """`run(forward, passes, like)` → every pass's prediction, on every rank.

    lockstep: every rank runs the same number of forwards (surplus slots repeat the last pass
    and drop the result). Needed when FSDP shards the DiT over ALL ranks: its per-block
    all-gathers then span the guidance groups and must be matched one for one.
    """

    def __init__(self, group: GuidanceGroup, lockstep: bool = False):
        self.group = group
        self.lockstep = lockstep

    def owner(self, index: int) -> int:
        """The guidance rank that computes pass `index`."""
        return index % self.group.size

    @torch.no_grad()
    def run(self, forward: Callable[[int], torch.Tensor], passes: int,
            like: torch.Tensor) -> list[torch.Tensor]:
        """forward(i) computes pass i; `like` has the predictions' shape, dtype and device."""
        if passes < 1:
            raise ValueError("a step needs at least one guidance pass")
        size, me = self.group.size, self.group.rank
        if size == 1:
            return [forward(i) for i in range(passes)]
        rounds = -(-passes // size)
        outputs: list[torch.Tensor | None] = [None] * passes
        for round_ in range(rounds):
            index = round_ * size + me
            if index < passes:
                outputs[index] = forward(index)
            elif self.lockstep:
                forward(passes - 1)          # keeps FSDP's collectives matched; result unused
        for index in range(passes):
            mine = outputs[index]
            outputs[index] = torch.empty_like(like) if mine is None else mine.contiguous()
            # Predictions are small (the latent's size): one broadcast each.
            dist.broadcast(outputs[index], group=self.group.group, group_src=self.owner(index))
        return outputs
