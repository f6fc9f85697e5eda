"""The fixture checker: verdicts per case, skips, runner failures and exit status."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from daemon.models import check
from daemon.models.check import main, run_checks
from daemon.models.checks.dit import run_schedule
from daemon.pipeline.sampler import sampling_timesteps


@pytest.fixture(autouse=True)
def only_the_schedule_runner(monkeypatch):
    """Keep these tests independent of the other families' runner modules (and fast)."""
    monkeypatch.setattr(check, "discover_runners", lambda: ({"schedule": run_schedule}, []))


def make_fixture(folder: Path, cases: list[tuple[dict, dict[str, torch.Tensor]]]) -> Path:
    (folder / "cases").mkdir(parents=True)
    entries = []
    for case, tensors in cases:
        case = {"tolerance_max_abs": 1e-3, "file": f"cases/{case['name']}.safetensors", **case}
        save_file(tensors, str(folder / case["file"]))
        entries.append(case)
    (folder / "cases.json").write_text(json.dumps({"cases": entries}))
    return folder


def schedule_case(name: str, shift: float, off_by: float = 0.0):
    warped = sampling_timesteps(4, shift)
    key = f"s4_shift{shift:g}"
    return ({"name": name, "kind": "schedule", "params": {"schedules": [{"steps": 4, "shift": shift}]}},
            {f"timesteps.{key}": warped + off_by})


def test_verdicts_pass_fail_and_skip_and_a_nonzero_exit_on_failure(tmp_path, capsys):
    fixture = make_fixture(tmp_path, [
        schedule_case("good", 7.0),
        schedule_case("bad", 7.0, off_by=0.01),
        ({"name": "later", "kind": "teleport"}, {"x": torch.zeros(1)}),
    ])
    results, errors = run_checks(fixture)
    assert errors == []
    assert [(r.name, r.status) for r in results] == [("good", "PASS"), ("bad", "FAIL"), ("later", "SKIP")]
    assert abs(results[1].max_abs - 0.01) < 1e-4
    assert results[2].message == "no runner for kind 'teleport'"

    assert main([str(fixture)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[0] == "good" and " PASS " in out[0]
    assert " FAIL " in out[1] and " SKIP " in out[2]
    assert out[-1] == "1 passed, 1 failed, 1 skipped"


def test_skips_alone_exit_zero(tmp_path):
    fixture = make_fixture(tmp_path, [schedule_case("good", 11.0),
                                      ({"name": "later", "kind": "teleport"}, {"x": torch.zeros(1)})])
    assert main([str(fixture)]) == 0


def test_a_raising_runner_fails_its_case_and_the_next_case_still_runs(tmp_path, monkeypatch):
    def explode(ctx):
        raise RuntimeError("weights on the moon")
    monkeypatch.setattr(check, "discover_runners",
                        lambda: ({"schedule": run_schedule, "boom": explode}, []))
    fixture = make_fixture(tmp_path, [({"name": "first", "kind": "boom"}, {"x": torch.zeros(1)}),
                                      schedule_case("second", 7.0)])
    results, _ = run_checks(fixture)
    assert [(r.name, r.status) for r in results] == [("first", "FAIL"), ("second", "PASS")]
    assert results[0].message == "RuntimeError: weights on the moon"


def test_a_required_output_the_runner_did_not_produce_fails_the_case(tmp_path, monkeypatch):
    def half_done(ctx):
        ctx.tensors["a"]                            # read: an input
        return {"b": torch.ones(2)}
    monkeypatch.setattr(check, "discover_runners", lambda: ({"partial": half_done}, []))
    tensors = {"a": torch.zeros(2), "b": torch.ones(2), "c": torch.ones(2), "inter.d": torch.ones(2)}
    fixture = make_fixture(tmp_path, [({"name": "p", "kind": "partial"}, tensors)])
    [result] = run_checks(fixture)[0]
    assert result.status == "FAIL"
    assert result.message == "c: required output not produced"     # not a (read), not inter.d


def test_a_shape_mismatch_fails_with_both_shapes(tmp_path, monkeypatch):
    monkeypatch.setattr(check, "discover_runners", lambda: ({"k": lambda ctx: {"y": torch.ones(3)}}, []))
    fixture = make_fixture(tmp_path, [({"name": "s", "kind": "k"}, {"y": torch.ones(2)})])
    [result] = run_checks(fixture)[0]
    assert result.status == "FAIL" and result.message == "y: shape (3,) ≠ (2,)"

