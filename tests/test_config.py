"""Config resolution: precedence, globals, overrides, ${var} substitution, trial ids, zoo formats."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import base_spec
from gymflow import config
from gymflow.errors import SpecError


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_precedence_is_defaults_then_spec_then_globals_then_overrides(tmp_path: Path) -> None:
    spec = _write(tmp_path / "s.yaml", base_spec(seed=1, evaluation={"episodes": 3}))
    g1 = _write(tmp_path / "g1.yaml", {"seed": 2, "budget": {"timesteps": 1000}})
    g2 = _write(tmp_path / "g2.yaml", {"seed": 3})
    resolved = config.resolve(spec, [g1, g2], ["seed=4"], deep=False)
    assert resolved.seed == 4  # --set beats both globals files
    assert resolved.budget.timesteps == 1000  # globals beat the spec
    assert resolved.evaluation.episodes == 3  # spec beats defaults
    assert resolved.evaluation.every_timesteps == 10000  # the section came from the spec, this field from defaults
    assert resolved.checkpoint.keep == 2  # a default nobody set
    assert config.resolve(spec, [g1, g2], deep=False).seed == 3  # the later globals file wins


def test_globals_provide_variables_and_well_known_values(tmp_path: Path) -> None:
    spec = _write(tmp_path / "s.yaml", base_spec(storage="/data/${team}/${experiment}/${seed}/${date}/${trial_id}",
                                                  description="by ${team.lead}"))
    glob = _write(tmp_path / "g.yaml", {"team": {"lead": "ada"}})
    resolved = config.resolve(spec, [glob], ["seed=7"], deep=False)
    assert resolved.storage == f"/data/{{'lead': 'ada'}}/test/7/{dt.date.today().isoformat()}/{resolved.trial_id}"
    assert resolved.description == "by ada"


def test_the_default_storage_path_names_the_experiment_and_the_trial(tmp_path: Path) -> None:
    spec = {k: v for k, v in base_spec(name="pendulum").items() if k != "storage"}
    resolved = config.resolve(_write(tmp_path / "s.yaml", spec), deep=False)
    assert resolved.storage == f"./runs/pendulum/{resolved.trial_id}"


def test_lone_variable_keeps_its_type_and_dollar_dollar_escapes(tmp_path: Path) -> None:
    spec = _write(tmp_path / "s.yaml", base_spec(budget={"timesteps": "${steps}"}, description="cost $${not_a_var}"))
    glob = _write(tmp_path / "g.yaml", {"steps": 2048})
    resolved = config.resolve(spec, [glob], deep=False)
    assert resolved.budget.timesteps == 2048
    assert resolved.description == "cost ${not_a_var}"


def test_set_values_are_yaml_typed_and_reach_nested_and_list_items(tmp_path: Path) -> None:
    spec = _write(tmp_path / "s.yaml", base_spec())
    resolved = config.resolve(spec, [], [
        "algorithm.hyperparams.learning_rate=3e-4", "env.normalize=true", "evaluation.every_timesteps=null",
        "algorithm.hyperparams.policy_kwargs={net_arch: [32, 32]}", "env.n_envs=4",
    ], deep=False)
    assert resolved.algorithm.hyperparams["learning_rate"] == pytest.approx(3e-4)
    assert resolved.env.normalize is not None and resolved.env.normalize.norm_obs
    assert resolved.evaluation.every_timesteps is None
    assert resolved.algorithm.hyperparams["policy_kwargs"] == {"net_arch": [32, 32]}
    assert resolved.env.n_envs == 4


def test_yaml_reads_exponent_floats_as_numbers() -> None:
    assert config.parse_yaml("a: 1e5\nb: 3e-4\nc: lin_1e-3\n", "x") == {"a": 100000.0, "b": 3e-4, "c": "lin_1e-3"}


def test_trial_id_is_stable_and_follows_content_not_storage() -> None:
    a = config.resolve(base_spec(storage="/a/${trial_id}"), deep=False)
    b = config.resolve(base_spec(storage="/b/${trial_id}"), deep=False)
    c = config.resolve(base_spec(seed=1, storage="/a/${trial_id}"), deep=False)
    assert a.trial_id == b.trial_id
    assert a.trial_id != c.trial_id
    assert a.trial_id.startswith("ppo-s0-") and c.trial_id.startswith("ppo-s1-")
    assert a.storage == f"/a/{a.trial_id}"
    assert config.resolve(base_spec(), trial_id="mine", deep=False).trial_id == "mine"


def test_zoo_env_keys_in_hyperparams_are_lifted_to_their_sections() -> None:
    spec = base_spec(env={"id": "CartPole-v1"}, algorithm={"name": "PPO", "hyperparams": {
        "n_envs": 8, "normalize": "dict(norm_obs=True, norm_reward=False)", "frame_stack": 2, "policy": "MlpPolicy"}})
    resolved = config.resolve(spec)
    assert resolved.env.n_envs == 8
    assert resolved.env.normalize is not None and resolved.env.normalize.norm_reward is False
    assert resolved.env.frame_stack == 2
    assert resolved.algorithm.policy == "MlpPolicy"
    assert resolved.algorithm.name == "ppo"
    assert resolved.algorithm.hyperparams == {}


def test_resolved_spec_round_trips_through_json() -> None:
    from gymflow.spec import Spec

    resolved = config.resolve(base_spec(env={"id": "sim_envs:OptionEnv", "scenario": {
        "target": {"min": -1, "max": 1}, "mode": {"values": ["a", "b"]}}, "wrappers": [{"sim_envs:ScaleReward": {"scale": 2}}]}))
    again = Spec.model_validate(resolved.model_dump(mode="json"))
    assert again == resolved
    assert again.env.wrappers[0].path == "sim_envs:ScaleReward" and again.env.wrappers[0].kwargs == {"scale": 2}


def test_specs_are_frozen() -> None:
    resolved = config.resolve(base_spec(), deep=False)
    with pytest.raises(Exception, match="frozen"):
        resolved.seed = 3  # type: ignore[misc]


def test_error_lists_globals_variables_as_known_names(tmp_path: Path) -> None:
    glob = _write(tmp_path / "g.yaml", {"bucket": "b"})
    with pytest.raises(SpecError, match=r"unknown variable \$\{buket\}\. Did you mean \$\{bucket\}\?"):
        config.resolve(_write(tmp_path / "s.yaml", base_spec(storage="/x/${buket}")), [glob], deep=False)


def test_algorithm_facts_are_introspected_once_then_read_from_a_version_keyed_cache(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from gymflow import checks

    checks.algo_facts.cache_clear()
    facts = checks.algo_facts("sac")
    assert facts == checks._introspect("sac")
    assert {"learning_rate", "buffer_size", "noise_type"} <= facts.hyperparams and "policy" not in facts.hyperparams
    assert facts.policies["MlpPolicy"] is not None and "net_arch" in facts.policies["MlpPolicy"]
    cache = checks._cache_file()
    assert cache.is_relative_to(Path(os.environ["GYMFLOW_CACHE"]))
    assert json.loads(cache.read_text())["sac"]["hyperparams"] == sorted(facts.hyperparams)

    # another process validates from the cache without importing torch
    probe = ("import sys; from gymflow import config; "
             "config.resolve({'name': 'x', 'env': {'id': 'Pendulum-v1'}, 'algorithm': {'name': 'sac', "
             "'hyperparams': {'learning_rate': 0.001, 'policy_kwargs': {'net_arch': [64]}}}, 'budget': {'timesteps': 10}}); "
             "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

    cache.write_text("{not json")  # a damaged cache is ignored and rewritten
    checks.algo_facts.cache_clear()
    assert checks.algo_facts("sac") == facts and json.loads(cache.read_text())["sac"]
