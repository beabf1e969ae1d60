"""The CSTR example end to end through gymflow: found by `module:Class` and by a registered id, its lesson checked
at validate, and the example specs valid."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import base_spec
from prefect_stack import ROOT

LESSON = {"cref": {"min": 0.8, "max": 0.92}, "noise": {"values": [0.0, 2.0]}}


def _cstr(**env: Any) -> dict[str, Any]:
    return base_spec(name="cstr", env={"id": "examples.cstr:CSTREnv", **env},
                     algorithm={"name": "sac", "hyperparams": {"learning_starts": 100}}, budget={"timesteps": 300})


def test_a_lesson_option_the_reset_does_not_take_fails_at_validate(write_spec: Any, cli: Any) -> None:
    result = cli("validate", str(write_spec(_cstr(scenario={**LESSON, "target": {"min": 0, "max": 1}}))))
    said = " ".join((result.stdout + result.stderr).split())
    assert result.code == 2, said
    assert ("env.scenario.target: CSTREnv.reset does not take the option 'target'; it takes cref, noise, ca0, t0. "
            "Rename or remove it") in said


def test_a_lesson_option_an_undeclared_reset_refuses_fails_at_validate(write_spec: Any, cli: Any) -> None:
    spec = base_spec(env={"id": "sim_envs:StrictOptionEnv", "scenario": {"speed": {"min": 0, "max": 1}}})
    result = cli("validate", str(write_spec(spec)))
    said = " ".join((result.stdout + result.stderr).split())
    assert result.code == 2, said
    assert ("env.scenario: StrictOptionEnv.reset refused the options speed drawn from the scenario: KeyError: 'no such "
            "option: speed'. Name only options its reset takes") in said


@pytest.mark.parametrize("name", ["cstr-sac.yaml", "cstr-sweep.yaml"])
def test_the_example_specs_validate(name: str, cli: Any) -> None:
    result = cli("validate", str(ROOT / "examples" / name))
    assert result.code == 0, result.stdout + result.stderr


def test_an_id_a_package_registers_through_an_entry_point_works_by_id(make_run: Any, write_spec: Any, cli: Any,
                                                                       tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed package (here: its dist-info on sys.path) whose `gymnasium.envs` entry point registers the CSTR
    as gymflow-examples/CSTR-v0: validate and the worker find it by that id."""
    from gymflow import worker
    from gymflow.runtime import envs

    site = tmp_path / "site"
    info = site / "cstr_sim-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cstr-sim\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gymnasium.envs]\ncstr = examples.cstr:register\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(envs, "_plugins_loaded", False)
    spec = base_spec(name="cstr", env={"id": "gymflow-examples/CSTR-v0", "scenario": LESSON, "kwargs": {"minutes": 2.0}},
                     budget={"timesteps": 256}, algorithm={"name": "ppo", "hyperparams": {"n_steps": 64, "batch_size": 64}})
    result = cli("validate", str(write_spec(spec)))
    assert result.code == 0, result.stdout + result.stderr
    store = make_run(spec)
    assert worker.train(store) == "completed"
    assert store.read_json("status.json")["timesteps"] == 256


def test_the_cloud_specs_are_the_local_experiment_with_only_backend_and_storage_changed(gcs: str, az_bucket: str,
                                                                                      cli: Any) -> None:
    import yaml

    local = yaml.safe_load((ROOT / "examples" / "cstr-sac.yaml").read_text())
    for kind, bucket in (("gcp", gcs), ("azure", az_bucket)):
        cloud = yaml.safe_load((ROOT / "examples" / f"cstr-{kind}.yaml").read_text())
        assert {k: v for k, v in cloud.items() if k not in ("backend", "storage")} == \
            {k: v for k, v in local.items() if k not in ("backend", "storage")}
        assert cloud["backend"]["kind"] == kind
        result = cli("validate", str(ROOT / "examples" / f"cstr-{kind}.yaml"), "--set", f"storage={bucket}/runs/${{trial_id}}")
        assert result.code == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_the_example_trains_to_beat_the_constant_coolant_baseline(run_stack: Any, tmp_path: Any) -> None:
    """examples/cstr-sac.yaml as a user runs it (at half its budget, to keep the suite short): the agent's final
    evaluation beats the constant-coolant baseline on the same lesson by more than the README's margin of 20."""
    import json

    from examples.cstr.baseline import constant_coolant

    spec = str(ROOT / "examples" / "cstr-sac.yaml")
    done = run_stack.gymflow("run", spec, "--set", "budget.timesteps=5000", "--set", f"storage={tmp_path}/run",
                             env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
                                  "GYMFLOW_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stdout + done.stderr
    trained = json.loads((tmp_path / "run" / "eval.json").read_text())["mean_reward"]
    baseline = sum(constant_coolant(spec, episodes=50)) / 50
    assert trained > baseline + 20, (trained, baseline)
    episodes = [json.loads(line) for line in (tmp_path / "run" / "metrics" / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) >= 50 and all(0.8 <= e["scenario"]["cref"] <= 0.92 for e in episodes)  # 100 steps at most each
