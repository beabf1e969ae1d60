"""`gymflow init` prints complete, valid specs with tuned values; `validate` prints the resolved spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gymflow import config
from gymflow.init import tuned_table

REQUIRED = [("ppo", "CartPole-v1"), ("a2c", "CartPole-v1"), ("dqn", "CartPole-v1"),
            ("ppo", "Acrobot-v1"), ("a2c", "Acrobot-v1"), ("dqn", "Acrobot-v1"),
            ("sac", "Pendulum-v1"), ("td3", "Pendulum-v1"), ("ddpg", "Pendulum-v1"), ("ppo", "Pendulum-v1"),
            ("sac", "MountainCarContinuous-v0"), ("td3", "MountainCarContinuous-v0"),
            ("ddpg", "MountainCarContinuous-v0"), ("ppo", "MountainCarContinuous-v0")]


@pytest.mark.parametrize(("algo", "env_id"), REQUIRED)
def test_init_prints_a_valid_spec_with_the_tuned_values(algo: str, env_id: str, cli: Any) -> None:
    result = cli("init", "--algo", algo, "--env", env_id)
    assert result.code == 0, result.stderr
    assert "# hyperparameters: tuned for this env" in result.stdout
    spec = config.resolve(config.parse_yaml(result.stdout, "init"))
    entry = tuned_table()[algo][env_id]
    assert spec.budget.timesteps == entry["timesteps"]
    assert spec.env.n_envs == entry.get("n_envs", 1)
    assert (spec.env.normalize is not None) == bool(entry.get("normalize"))
    for key in entry.get("hyperparams", {}):
        assert key in spec.algorithm.hyperparams


def test_init_falls_back_to_the_algorithm_default(cli: Any) -> None:
    result = cli("init", "--algo", "trpo", "--env", "Acrobot-v1")
    assert result.code == 0
    assert "no tuned values for Acrobot-v1: trpo defaults" in result.stdout
    spec = yaml.safe_load(result.stdout)
    assert spec["algorithm"] == {"name": "trpo", "hyperparams": {}} and spec["budget"]["timesteps"] == 1_000_000


def test_ppo_cartpole_spec_matches_the_zoo_settings(cli: Any) -> None:
    spec = yaml.safe_load(cli("init", "--algo", "ppo", "--env", "CartPole-v1").stdout)
    assert spec["env"]["n_envs"] == 8 and spec["budget"]["timesteps"] == 100_000
    assert spec["algorithm"]["hyperparams"] == {"n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98,
                                                "n_epochs": 20, "ent_coef": 0.0, "learning_rate": "lin_0.001",
                                                "clip_range": "lin_0.2"}
    assert spec["name"] == "cartpole-ppo"


def test_validate_prints_the_resolved_spec(cli: Any, tmp_path: Path) -> None:
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(cli("init", "--algo", "ppo", "--env", "CartPole-v1").stdout)
    result = cli("validate", spec_file, "--set", "budget.timesteps=50000")
    assert result.code == 0
    resolved = yaml.safe_load(result.stdout)
    assert resolved["budget"]["timesteps"] == 50000
    assert resolved["trial_id"].startswith("ppo-s0-")
    assert resolved["storage"] == f"./runs/cartpole-ppo/{resolved['trial_id']}"
    assert "is valid" in result.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server", "mlflow_uri")
def test_init_ppo_cartpole_run_through_the_pipeline_reaches_475(cli: Any, tmp_path: Path) -> None:
    """The headline: the generated spec, seed 0, 100k timesteps, 10 deterministic episodes >= 475."""
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(cli("init", "--algo", "ppo", "--env", "CartPole-v1").stdout)
    result = cli("run", spec_file, "--set", f"storage={tmp_path}/run")
    assert result.code == 0, result.stderr
    report = yaml.safe_load((tmp_path / "run" / "eval.json").read_text())
    assert report["n_episodes"] == 10 and report["deterministic"] is True
    assert report["mean_reward"] >= 475
    status = yaml.safe_load((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "completed"


def test_the_console_command_flushes_its_output_and_keeps_its_exit_code(tmp_path: Path) -> None:
    """`gymflow` skips the interpreter's teardown when it exits: output and exit codes must survive that."""
    import os
    import subprocess
    import sys

    good = tmp_path / "good.yaml"
    good.write_text(subprocess.run([sys.executable, "-m", "gymflow", "init", "--algo", "ppo", "--env", "CartPole-v1"],
                                   check=True, capture_output=True, text=True).stdout)
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("timesteps: 100000", "timesteps: -5"))
    env = {**os.environ, "CI": "true"}
    ok = subprocess.run([sys.executable, "-m", "gymflow", "validate", str(good)], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "name: cartpole-ppo" in ok.stdout and "is valid" in ok.stderr
    refused = subprocess.run([sys.executable, "-m", "gymflow", "validate", str(bad)], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "budget.timesteps: must be >= 1, got -5" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_missing_option_is_a_usage_error_with_exit_code_2(cli: Any) -> None:
    result = cli("init", "--env", "CartPole-v1")
    assert result.code == 2
    assert "Missing option '--algo'" in result.stderr and "Traceback" not in result.stderr and "failed:" not in result.stderr
