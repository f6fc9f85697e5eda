"""Case runners for `python -m daemon.models.check`: one module per model family.

Each module exports RUNNERS = {kind: fn}; fn(ctx) returns the outputs and intermediates it
computed, keyed exactly as in the case file, so the checker can compare them one by one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class CaseContext:
    fixture_dir: Path              # the folder holding cases.json
    case: dict                     # this case's entry in cases.json
    cases_json: dict               # the whole cases.json (configs, seeds, files)
    tensors: dict[str, torch.Tensor]   # the case file's tensors (inputs, outputs, intermediates)
    device: torch.device
    dtype: torch.dtype

    @property
    def params(self) -> dict:
        return self.case.get("params", {})
