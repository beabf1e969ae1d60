"""Bad input: one clear message per problem naming the field, exit code 2, no traceback, no run dir."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import base_spec


def _with(path: str, value: Any, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """base_spec() with spec[path] = value (dotted path; value None deletes)."""
    data = copy.deepcopy(spec or base_spec())
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return data


PPO = {"name": "ppo"}
BAD_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown_algorithm", _with("algorithm.name", "ppoo"), "algorithm.name: unknown algorithm 'ppoo'. Did you mean 'ppo'?"),
    ("unknown_env_close_match", _with("env.id", "CartPole-v2"),
     "env.id: environment 'CartPole-v2' is not registered in gymnasium. Did you mean: 'CartPole-v1'"),
    ("both_budgets", _with("budget", {"timesteps": 100, "episodes": 5}), "budget: give exactly one of timesteps or episodes (both are set)"),
    ("neither_budget", _with("budget", {}), "budget: give exactly one of timesteps or episodes (neither is set)"),
    ("negative_budget", _with("budget", {"timesteps": -5}), "budget.timesteps: must be >= 1, got -5"),
    ("zero_budget", _with("budget", {"episodes": 0}), "budget.episodes: must be >= 1, got 0"),
    ("unknown_top_level_key", _with("seeed", 3), "seeed: unknown field. Did you mean 'seed'?"),
    ("unknown_nested_key", _with("evaluation.episdoes", 3), "evaluation.episdoes: unknown field. Did you mean 'episodes'?"),
    ("wrong_type", _with("env.n_envs", "many"), "env.n_envs: must be an integer, got 'many'"),
    ("unknown_variable", _with("storage", "./runs/${teem}/x"), "storage: unknown variable ${teem}."),
    ("missing_required", _with("env", None), "env: required field is missing"),
    ("unknown_hyperparameter", _with("algorithm.hyperparams", {"learning_rat": 0.1}),
     "algorithm.hyperparams.learning_rat: unknown hyperparameter for ppo. Did you mean 'learning_rate'?"),
    ("malformed_schedule", _with("algorithm.hyperparams", {"learning_rate": "lin_abc"}),
     "algorithm.hyperparams.learning_rate: malformed schedule 'lin_abc': use a number (3e-4) or a linear schedule 'lin_<start>'"),
    ("wrapper_does_not_import", _with("env.wrappers", ["nosuchmod.wrappers:Foo"]),
     "env.wrappers.0.path: cannot import 'nosuchmod.wrappers:Foo': module 'nosuchmod' not found"),
    ("wrapper_class_missing", _with("env.wrappers", ["sim_envs:NoSuchWrapper"]),
     "env.wrappers.0.path: cannot import 'sim_envs:NoSuchWrapper': module 'sim_envs' has no attribute 'NoSuchWrapper'"),
    ("wrapper_not_an_entry_point", _with("env.wrappers", ["ScaleReward"]),
     "env.wrappers.0.path: expected 'package.module:Class', got 'ScaleReward'"),
    ("scenario_min_above_max", _with("env.scenario", {"target": {"min": 5, "max": 1}}),
     "env.scenario.target: min (5.0) is greater than max (1.0); swap them"),
    ("scenario_empty_values", _with("env.scenario", {"mode": {"values": []}}), "env.scenario.mode.values: must not be empty"),
    ("evaluation_episodes_zero", _with("evaluation.episodes", 0), "evaluation.episodes: must be >= 1, got 0"),
    ("action_space_mismatch", _with("env.id", "Pendulum-v1", _with("algorithm", {"name": "dqn"})),
     "algorithm.name: dqn supports Discrete action spaces; Pendulum-v1 has Box. Pick another algorithm"),
    ("bad_vectorization", _with("env.vectorization", "threads"), "env.vectorization: must be one of 'dummy' or 'subprocess', got 'threads'"),
    ("unknown_backend_kind", _with("backend", {"kind": "aws"}), "backend.kind: unknown backend 'aws'. Registered: azure, gcp, local"),
    ("backend_setting_unknown", _with("backend", {"kind": "local", "heartbeat_timout_s": 3}),
     "backend.heartbeat_timout_s: unknown field. Did you mean 'heartbeat_timeout_s'?"),
    ("backend_class_missing", _with("backend", {"kind": "fault_backends:NoSuchBackend"}),
     "backend.kind: cannot load backend 'fault_backends:NoSuchBackend': AttributeError"),
    ("unknown_activation", _with("algorithm.hyperparams", {"policy_kwargs": {"activation_fn": "swishy"}}),
     "algorithm.hyperparams.policy_kwargs: unknown activation function 'swishy'; allowed: elu, gelu"),
    ("unknown_policy_kwarg", _with("algorithm.hyperparams", {"policy_kwargs": {"net_arc": [64]}}),
     "algorithm.hyperparams.policy_kwargs.net_arc: not an argument of MlpPolicy. Did you mean 'net_arch'?"),
    ("unknown_policy", _with("algorithm.policy", "MlpPolicyy"), "algorithm.policy: unknown policy 'MlpPolicyy' for ppo; allowed: CnnPolicy, MlpPolicy, MultiInputPolicy"),
    ("early_stopping_empty", _with("evaluation.early_stopping", {"min_delta": 1.0}),
     "evaluation.early_stopping: set patience, reward_threshold or both (or remove early_stopping)"),
    ("bad_name", _with("name", "my experiment"), "name: invalid value 'my experiment': use letters, digits, '_', '.', '-'"),
    ("zoo_key_conflict", _with("algorithm.hyperparams", {"n_envs": 4}),
     "algorithm.hyperparams.n_envs (4) conflicts with env.n_envs (2); keep one"),
    ("schedule_with_episode_budget", _with("budget", {"episodes": 5}, _with("algorithm.hyperparams", {"learning_rate": "lin_0.001"})),
     "algorithm.hyperparams.learning_rate: the schedule 'lin_0.001' decays over budget.timesteps; with an episodes budget use a constant"),
    ("bad_noise_type", _with("env.id", "Pendulum-v1", _with("algorithm", {"name": "td3", "hyperparams": {"noise_type": "pink"}})),
     "algorithm.hyperparams.noise_type: unknown noise_type 'pink'; allowed: normal, ornstein-uhlenbeck"),
    ("env_kwargs_rejected", _with("env.kwargs", {"gravity_x": 1}), "env: the env could not be created: TypeError"),
    ("entry_point_missing_class", _with("env.id", "sim_envs:NoSuchEnv"), "env.id: 'sim_envs' has no class 'NoSuchEnv' and registers no env of that id"),
    ("seed_negative", _with("seed", -1), "seed: must be >= 0, got -1"),
    ("train_freq_unit", _with("env.id", "Pendulum-v1", _with("algorithm", {"name": "sac", "hyperparams": {"train_freq": [1, "week"]}})),
     "algorithm.hyperparams.train_freq: train_freq must be a positive integer or [n, 'step'|'episode'], got [1, 'week']"),
]


@pytest.mark.parametrize(("case", "spec", "message"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_is_refused_with_one_clear_message_and_no_run_dir(case: str, spec: dict[str, Any], message: str, write_spec: Any, cli: Any, tmp_path: Path) -> None:
    result = cli("run", write_spec(spec))
    assert result.code == 2, result.stderr
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()
    assert "problem" in result.stderr.splitlines()[0]


def test_every_problem_is_reported_at_once(write_spec: Any, cli: Any) -> None:
    spec = _with("budget", {"timesteps": 0}, _with("env.id", "CartPole-v2", _with("evaluation.episodes", 0)))
    result = cli("validate", write_spec(spec))
    text = " ".join(result.stderr.split())
    assert result.code == 2
    assert "3 problems in" in text
    for expected in ("budget.timesteps: must be >= 1", "env.id: environment 'CartPole-v2'", "evaluation.episodes: must be >= 1"):
        assert expected in text


def test_bad_override_syntax_names_the_fix(write_spec: Any, cli: Any) -> None:
    result = cli("validate", write_spec(), "--set", "budget.timesteps")
    assert result.code == 2
    assert "--set: expected dotted.path=value, got 'budget.timesteps' (for example --set budget.timesteps=50000)" in result.stderr


def test_override_of_unknown_field_suggests_the_name(write_spec: Any, cli: Any) -> None:
    result = cli("validate", write_spec(), "--set", "budget.timestep=10")
    assert result.code == 2
    assert "budget.timestep: unknown field. Did you mean 'timesteps'?" in result.stderr


def test_invalid_yaml_names_the_line(write_spec: Any, cli: Any) -> None:
    result = cli("validate", write_spec("name: x\nenv: {id: CartPole-v1\n"))
    assert result.code == 2
    assert re.search(r"invalid YAML: line \d+, column \d+", result.stderr)


def test_missing_spec_file_is_a_user_error(cli: Any, tmp_path: Path) -> None:
    result = cli("validate", tmp_path / "nope.yaml")
    assert result.code == 2
    assert f"spec file not found: {tmp_path / 'nope.yaml'}. Check the path." in " ".join(result.stderr.split())


def test_spec_that_is_not_a_mapping_is_refused(write_spec: Any, cli: Any) -> None:
    result = cli("validate", write_spec("- just\n- a list\n"))
    assert result.code == 2
    assert "a spec file must hold a mapping of fields, got list" in result.stderr


def test_init_with_unknown_algorithm_suggests_one(cli: Any) -> None:
    result = cli("init", "--algo", "sacc", "--env", "Pendulum-v1")
    assert result.code == 2
    assert "--algo: unknown algorithm 'sacc'. Did you mean 'sac'?" in result.stderr


def test_init_with_unknown_env_suggests_one(cli: Any) -> None:
    result = cli("init", "--algo", "ppo", "--env", "Pendulum-v0")
    assert result.code == 2
    assert "env.id: environment 'Pendulum-v0' is not registered in gymnasium. Did you mean: 'Pendulum-v1'" in " ".join(result.stderr.split())
    assert result.stdout == ""


def test_worker_on_a_run_dir_without_spec_says_how_to_create_one(cli: Any, tmp_path: Path) -> None:
    result = cli("worker", "train", tmp_path / "empty")
    assert result.code == 2
    assert "has no spec.json; create the run with `gymflow run SPEC`" in " ".join(result.stderr.split())
