"""Let xfuser 0.4.5 initialise on CPU-only torch with gloo — for tests only, never product code.

xfuser refuses to import without an accelerator (`xfuser.envs.get_device_version` raises) and,
without CUDA, skips yunchang and so builds no ulysses/ring groups. Loading `xfuser.envs` (and
the `xfuser.logger` it needs) from their files before the package, then patching them, is
enough for `init_distributed_environment(backend="gloo")` and `initialize_model_parallel`
(shared/docs/ECOSYSTEM.md). The product's SP attention uses only those groups and torch
collectives, so on CPU it runs exactly the code it runs on GPUs.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


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
