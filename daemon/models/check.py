"""Prove the model stack against the official-code fixtures.

    python -m daemon.models.check FIXTURE_DIR [--device cpu] [--dtype float32] [--kind KIND ...] [-v]

Runs every case of FIXTURE_DIR/cases.json through the runner registered for its kind by the
modules of daemon/models/checks/ (each exports RUNNERS = {kind: fn(CaseContext) -> tensors}),
compares each returned tensor that the case file holds (max |error| against the case's
tolerance) and prints one line per case. A case passes when every compared tensor is within
tolerance and every required output was produced: a key that is not `inter.*` and that the
runner did not read as an input. Unknown kinds are SKIP; a runner that raises is a FAIL.
Exit status 0 only if no case failed (skips allowed) and every runner module imported.
"""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from daemon.models import checks
from daemon.models.checks import CaseContext
from daemon.models.loader import load_safetensors

Runner = Callable[[CaseContext], dict[str, torch.Tensor]]

# Inputs of each kind (shared/fixtures/README.md); anything a runner reads also counts as one.
KNOWN_INPUTS = {
    "dit": {"x", "t", "context", "clip_fea", "y", "audio_full", "audio_index", "ref_target_masks",
            "seq_len", "context_null", "t_next"},
    "audio_proj": {"audio_embeds", "audio_embeds_vf"},
    "masks": {"bbox"},
    "t5": {"ids", "mask"},
    "clip": {"videos"},
    "vae_encode": {"video"},
    "vae_decode": {"latent"},
    "wav2vec": {"waveform"},
    "schedule": set(),
}


@dataclass
class TensorResult:
    key: str
    max_abs: float | None        # None: not produced (required) or shape mismatch
    note: str = ""


@dataclass
class CaseResult:
    name: str
    kind: str
    status: str                  # PASS, FAIL, SKIP
    tolerance: float
    max_abs: float | None = None
    message: str = ""
    seconds: float = 0.0
    tensors: list[TensorResult] = field(default_factory=list)


class _ReadTracking(dict):
    """The case tensors, remembering which keys the runner read (those are its inputs)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def discover_runners() -> tuple[dict[str, Runner], list[str]]:
    """{kind: runner} from every module of daemon.models.checks, and import/registry errors."""
    runners: dict[str, Runner] = {}
    errors: list[str] = []
    for info in sorted(pkgutil.iter_modules(checks.__path__), key=lambda m: m.name):
        name = f"{checks.__name__}.{info.name}"
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            errors.append(f"{name}: import failed: {type(exc).__name__}: {exc}")
            continue
        for kind, fn in getattr(module, "RUNNERS", {}).items():
            if kind in runners:
                errors.append(f"{name}: kind '{kind}' already registered by {runners[kind].__module__}")
                continue
            runners[kind] = fn
    return runners, errors


def max_abs_error(got: torch.Tensor, want: torch.Tensor) -> float:
    diff = (got.detach().cpu().double() - want.double()).abs()
    if diff.numel() == 0:
        return 0.0
    worst = diff.max().item()
    return worst if diff.isfinite().all() else float("inf")


def compare(case: dict, tensors: dict[str, torch.Tensor], produced: dict[str, torch.Tensor],
            inputs: set[str]) -> list[TensorResult]:
    results = []
    for key in sorted(tensors):
        want = tensors[key]
        if key not in produced:
            if not key.startswith("inter.") and key not in inputs:
                results.append(TensorResult(key, None, "required output not produced"))
            continue
        got = produced[key]
        if tuple(got.shape) != tuple(want.shape):
            results.append(TensorResult(key, None, f"shape {tuple(got.shape)} ≠ {tuple(want.shape)}"))
            continue
        results.append(TensorResult(key, max_abs_error(got, want)))
    return results


def run_case(fixture_dir: Path, cases_json: dict, case: dict, runners: dict[str, Runner],
             device: torch.device, dtype: torch.dtype) -> CaseResult:
    tolerance = float(case.get("tolerance_max_abs", cases_json.get("tolerance", {}).get("max_abs", 1e-4)))
    result = CaseResult(case["name"], case["kind"], "SKIP", tolerance)
    runner = runners.get(case["kind"])
    if runner is None:
        result.message = f"no runner for kind '{case['kind']}'"
        return result
    started = time.perf_counter()
    try:
        tensors = _ReadTracking(load_safetensors(fixture_dir / case["file"]))
        ctx = CaseContext(fixture_dir=fixture_dir, case=case, cases_json=cases_json, tensors=tensors,
                          device=device, dtype=dtype)
        produced = runner(ctx)
        inputs = tensors.read | KNOWN_INPUTS.get(case["kind"], set())
        result.tensors = compare(case, dict(tensors), produced, inputs)
    except Exception as exc:
        result.status = "FAIL"
        result.message = f"{type(exc).__name__}: {exc}"
        result.tensors = [TensorResult("(runner)", None, traceback.format_exc(limit=-3).strip())]
        result.seconds = time.perf_counter() - started
        return result
    result.seconds = time.perf_counter() - started
    errors = [t.max_abs for t in result.tensors if t.max_abs is not None]
    result.max_abs = max(errors) if errors else None
    problems = [t for t in result.tensors if t.max_abs is None or not t.max_abs <= tolerance]
    if not result.tensors:
        result.status, result.message = "FAIL", "runner produced no tensor the case file holds"
    elif problems:
        result.status = "FAIL"
        result.message = "; ".join(f"{t.key}: {t.note or f'{t.max_abs:.3g}'}" for t in problems[:3])
    else:
        result.status = "PASS"
    return result


def run_checks(fixture_dir: Path, *, device="cpu", dtype=torch.float32, kinds: set[str] | None = None,
               names: set[str] | None = None) -> tuple[list[CaseResult], list[str]]:
    """Run the fixture's cases (optionally only some kinds/names). → (results, module errors)."""
    fixture_dir = Path(fixture_dir)
    cases_json = json.loads((fixture_dir / "cases.json").read_text())
    runners, errors = discover_runners()
    results = []
    for case in cases_json["cases"]:
        if (kinds and case["kind"] not in kinds) or (names and case["name"] not in names):
            continue
        results.append(run_case(fixture_dir, cases_json, case, runners, torch.device(device), dtype))
    return results, errors


def format_case(r: CaseResult) -> str:
    err = "-" if r.max_abs is None else f"{r.max_abs:.3e}"
    line = f"{r.name:<16} {r.kind:<11} max_abs {err:>9}  tol {r.tolerance:.0e}  {r.status}  ({r.seconds:.1f}s)"
    return f"{line}  {r.message}" if r.message else line


def format_tensor(t: TensorResult, tolerance: float) -> str:
    if t.max_abs is None:
        return f"    {t.key:<36} {t.note}"
    verdict = "ok" if t.max_abs <= tolerance else "OVER"
    return f"    {t.key:<36} {t.max_abs:.3e}  {verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.models.check", description=__doc__.split("\n")[0])
    parser.add_argument("fixture_dir", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--kind", action="append", help="only cases of this kind (repeatable)")
    parser.add_argument("--case", action="append", help="only the case of this name (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per compared tensor")
    args = parser.parse_args(argv)

    if not (args.fixture_dir / "cases.json").is_file():
        print(f"{args.fixture_dir / 'cases.json'} not found", file=sys.stderr)
        return 2
    results, errors = run_checks(args.fixture_dir, device=args.device, dtype=getattr(torch, args.dtype),
                                 kinds=set(args.kind or ()), names=set(args.case or ()))
    for error in errors:
        print(f"ERROR {error}")
    for r in results:
        print(format_case(r))
        if args.verbose:
            for t in r.tensors:
                print(format_tensor(t, r.tolerance))
    counts = {status: sum(r.status == status for r in results) for status in ("PASS", "FAIL", "SKIP")}
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"
          + (f", {len(errors)} runner module errors" if errors else ""))
    return 1 if counts["FAIL"] or errors else 0


if __name__ == "__main__":
    sys.exit(main())
