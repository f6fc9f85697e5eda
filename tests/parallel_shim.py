"""Helpers for tests that run several ranks — for tests only, never product code: `run_ranks`
launches a rank program under torchrun, `install_xfuser_cpu_shim` lets xfuser run on CPU.

xfuser 0.4.5 refuses to import without an accelerator (`xfuser.envs.get_device_version` raises)
and, without CUDA, skips yunchang and so builds no ulysses/ring groups. Loading `xfuser.envs` (and
the `xfuser.logger` it needs) from their files before the package, then patching them, is
enough for `init_distributed_environment(backend="gloo")` and `initialize_model_parallel`
(shared/docs/ECOSYSTEM.md). The product's SP attention uses only those groups and torch
collectives, so on CPU it runs exactly the code it runs on GPUs.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_ranks(script: Path, args: list, *, ranks: int, log: Path, timeout_s: float) -> None:
    """Run `script args…` on `ranks` CPU ranks under torchrun (one thread each, the repo
    importable), its output in `log`. Fails the calling test with the log's tail when a rank
    fails, or when the run passes `timeout_s`: a failed collective hangs the other ranks, so
    the launch is a process group of its own, killed whole."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={ranks}", str(script), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)     # torchrun and every rank
            proc.wait()
            pytest.fail(f"{ranks}-rank run hung past {timeout_s} s:\n{log.read_text()[-4000:]}")
    if code != 0:
        pytest.fail(f"{ranks}-rank run failed ({code}):\n{log.read_text()[-6000:]}")


def _load_file_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def install_xfuser_cpu_shim() -> None:
    if "xfuser" in sys.modules:
        raise RuntimeError("install the shim before anything imports xfuser")
    package = Path(importlib.util.find_spec("xfuser").origin).parent   # finds, does not import
    _load_file_module("xfuser.logger", package / "logger.py")
    envs = _load_file_module("xfuser.envs", package / "envs.py")
    envs.get_device_version = lambda: None
    envs.get_torch_distributed_backend = lambda: "gloo"
    envs.PACKAGES_CHECKER.packages_info["has_long_ctx_attn"] = True
