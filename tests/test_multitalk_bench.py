"""bench/multitalk_e2e.py runs its whole harness on the CPU with TINY=1."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_end_to_end_bench_times_every_phase_in_tiny_mode(tmp_path):
    env = dict(os.environ, TINY="1", OUT="")
    run = subprocess.run([sys.executable, "bench/multitalk_e2e.py", "--steps", "2",
                          "--results", str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "multitalk_e2e_tiny.json").read_text())
    row = record["row"]
    assert record["tiny"] and record["command"].startswith("python bench/multitalk_e2e.py")
    assert (row["resolution"], row["frames"], row["clips"], row["steps"]) == ("64x32", 30, 1, 2)
    assert set(row["phases_s"]) >= {"text_encode", "audio_features", "clip_encode", "vae_encode",
                                    "sample_step", "vae_decode", "color_correction",
                                    "clip_write", "mux"}
    assert "sampling step" in run.stdout and "render total" in run.stdout
