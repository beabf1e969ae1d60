"""Hostile and careless input: refused by validate, run and sweep alike, exit 2, one message per problem
naming the field or the file's line and column, no traceback, nothing created, within seconds."""

from __future__ import annotations

import copy
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import CliResult, base_spec

COMMANDS = ("validate", "run", "sweep")
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder to run in; it must stay empty."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def refuse(cli: Callable[..., CliResult], workdir: Path) -> Callable[..., str]:
    """Run every command on the same arguments; each must refuse quietly and quickly. Returns validate's message."""

    def run(*args: Any, commands: tuple[str, ...] = COMMANDS, limit_s: float = 10.0) -> str:
        messages = []
        for command in commands:
            started = time.monotonic()
            result = cli(command, *args)
            took = time.monotonic() - started
            text = " ".join(result.stderr.split())
            assert result.code == 2, f"{command}: exit {result.code}: {result.stderr}"
            assert "Traceback" not in result.stderr + result.stdout, result.stderr
            assert "problem" in text and took < limit_s, (command, took, text)
            assert list(workdir.iterdir()) == [], f"{command} created {list(workdir.iterdir())}"
            messages.append(text)
        return messages[0]

    return run


def _spec(tmp_path: Path, data: dict[str, Any] | str, name: str = "spec.yaml") -> Path:
    folder = tmp_path / "specs"
    folder.mkdir(exist_ok=True)
    path = folder / name
    if isinstance(data, str):
        path.write_text(data)
    else:
        data = dict(data)
        data.setdefault("storage", str(tmp_path / "runs" / "${trial_id}"))
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _sweepable(**sections: Any) -> dict[str, Any]:
    return {**base_spec(**sections), "sweep": {"seeds": [0, 1]}}


def test_an_alias_bomb_is_refused_at_once(refuse: Any, tmp_path: Path) -> None:
    message = refuse(_spec(tmp_path, BOMB), limit_s=3)
    assert "refused YAML: line 6, column 4: its aliases expand to more than 100,000 values (an alias bomb?)" in message


def test_an_alias_to_its_own_container_is_refused(refuse: Any, tmp_path: Path) -> None:
    assert "an alias refers to the node that contains it" in refuse(_spec(tmp_path, "name: &a [x, *a]\n"))


def test_deep_nesting_is_refused_without_a_recursion_error(refuse: Any, tmp_path: Path) -> None:
    message = refuse(_spec(tmp_path, "name: " + "[" * 20_000 + "]" * 20_000 + "\n"), limit_s=3)
    assert "refused YAML: line 1, column 70: nested more than 64 levels deep" in message


def test_a_huge_file_is_refused_before_it_is_read_and_never_echoed(refuse: Any, tmp_path: Path, cli: Any) -> None:
    message = refuse(_spec(tmp_path, "name: " + "a" * 5_000_000 + "\n"), limit_s=3)
    assert "the file is 4,883 KiB; a spec or globals file is at most 256 KiB" in message
    assert len(message) < 500


def test_a_long_value_is_quoted_as_a_short_excerpt(refuse: Any, tmp_path: Path) -> None:
    message = refuse(_spec(tmp_path, base_spec(name="x" * 100_000)))
    assert "name: invalid value 'xxxxx" in message and "(100,002 characters)" in message and len(message) < 1000


@pytest.mark.parametrize("where", ["spec", "globals"])
def test_a_file_that_is_not_utf8_names_the_byte(where: str, refuse: Any, tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    args = [bad] if where == "spec" else [_spec(tmp_path, _sweepable()), "--globals", bad]
    message = refuse(*args)
    assert "not UTF-8 text: byte 0xe9 at line 1, column 10. Save the file as UTF-8" in message
    if where == "globals":
        assert f"{bad}: not UTF-8" in message


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused(value: str, refuse: Any, tmp_path: Path) -> None:
    message = refuse(_spec(tmp_path, _sweepable()), "--set", f"algorithm.hyperparams.learning_rate={value}")
    assert "algorithm.hyperparams.learning_rate: must be a finite number, got" in message
    assert "cannot be trained on or stored" in message


def test_a_duplicate_key_is_an_error_not_a_merge(refuse: Any, tmp_path: Path) -> None:
    text = yaml.safe_dump(_sweepable(), sort_keys=False) + "budget: {timesteps: 99}\n"
    message = refuse(_spec(tmp_path, text))
    assert "duplicate key 'budget' (first at line" in message and "keep one" in message


def test_a_variable_cycle_is_an_error(refuse: Any, tmp_path: Path) -> None:
    globals_file = tmp_path / "globals.yaml"
    globals_file.write_text("a: ${b}/x\nb: ${a}\n")
    message = refuse(_spec(tmp_path, _sweepable(storage=str(tmp_path / "runs" / "${a}"))), "--globals", globals_file)
    assert "storage: variable cycle ${a} -> ${b} -> ${a}: a variable cannot refer back to itself" in message


def test_variables_may_use_variables(tmp_path: Path) -> None:
    from gymflow import config

    globals_file = tmp_path / "globals.yaml"
    globals_file.write_text(f"root: {tmp_path}/runs\nbucket: ${{root}}/${{experiment}}\n")
    spec = config.resolve(base_spec(storage="${bucket}/${trial_id}"), [globals_file], deep=False)
    assert spec.storage == f"{tmp_path}/runs/test/{spec.trial_id}"


def test_an_empty_spec_file_says_so(refuse: Any, tmp_path: Path) -> None:
    message = refuse(_spec(tmp_path, "# nothing yet\n"))
    assert "the file holds only comments. A spec needs at least name, env, algorithm and budget" in message
    assert "the file is empty." in refuse(_spec(tmp_path, "", "empty.yaml"))


def test_python_tags_are_never_constructed(refuse: Any, tmp_path: Path, workdir: Path) -> None:
    text = "name: !!python/object/apply:os.system ['touch pwned']\n"
    assert "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'" in refuse(_spec(tmp_path, text))


def test_an_env_or_wrapper_that_is_not_a_gymnasium_class_is_never_called(refuse: Any, tmp_path: Path) -> None:
    spec = _sweepable(env={"id": "subprocess:run", "kwargs": {"args": ["touch", "pwned"]},
                           "wrappers": ["subprocess:check_call"]})
    message = refuse(_spec(tmp_path, spec))
    assert "env.id: 'subprocess:run' is not a gymnasium.Env subclass" in message
    assert "env.wrappers.0.path: 'subprocess:check_call' is not a gymnasium.Wrapper subclass" in message


def test_every_problem_of_every_stage_at_once(refuse: Any, tmp_path: Path) -> None:
    spec = _sweepable(env={"id": "CartPole-v2", "n_env": 2}, seeed=1,
                      evaluation={"episdoes": 2}, storage=f"{tmp_path}/afile/runs", tracking={"uri": "mlfow://x"})
    (tmp_path / "afile").write_text("")
    spec["sweep"] = {"grid": {"algorithm.hyperparams.learning_rat": [0.1]}}
    message = refuse(_spec(tmp_path, spec))
    for expected in ("env.n_env: unknown field. Did you mean 'n_envs'?", "seeed: unknown field. Did you mean 'seed'?",
                     "evaluation.episdoes: unknown field. Did you mean 'episodes'?",
                     "env.id: environment 'CartPole-v2' is not registered in gymnasium. Did you mean: 'CartPole-v1'",
                     f"storage: {tmp_path}/afile is a file, so the run directory {tmp_path}/afile/runs cannot be created",
                     "tracking.uri: MLflow cannot track to 'mlfow://x': unknown scheme 'mlfow'"):
        assert expected in message
    assert message.startswith("error: 6 problems")


@pytest.mark.parametrize(("sweep", "message"), [
    ({"grid": {"name": ["a", "b"]}}, "sweep.grid.name: 'name' cannot be swept: every trial of a sweep belongs to one experiment"),
    ({"grid": {"algorithm.hyperparams.n_steps": [64, 0]}},
     "algorithm.hyperparams.n_steps: PPO refuses this configuration: AssertionError: `n_steps * n_envs` must be greater than 1. "
     "Currently n_steps=0 and n_envs=2. Change the value (checked by building PPO once on CartPole-v1)"),
    ({"grid": {"env.n_envs": [2, 0]}}, "env.n_envs: must be >= 1, got 0 (in the trial with env.n_envs=0, seed=0)"),
    ({"seeds": [1, 1]}, "sweep.seeds: seeds must be distinct non-negative integers"),
    ({"grid": {"seed": list(range(200))}, "random": {"n": 100, "params": {"algorithm.hyperparams.gamma": {
        "distribution": "uniform", "low": 0.9, "high": 0.99}}}}, "sweep: expands to 20,000 trials, more than 10,000"),
])
def test_validate_checks_the_sweep_section_and_every_trial_it_expands_to(sweep: dict[str, Any], message: str,
                                                                        refuse: Any, tmp_path: Path) -> None:
    assert message in refuse(_spec(tmp_path, {**base_spec(), "sweep": sweep}))


@pytest.mark.parametrize(("hyperparams", "message"), [
    ({"n_steps": 0}, "algorithm.hyperparams.n_steps: PPO refuses this configuration: AssertionError: `n_steps * n_envs` "
                     "must be greater than 1"),
    ({"learning_rate": -1}, "algorithm.hyperparams.learning_rate: PPO refuses this configuration: ValueError: "
                            "Invalid learning rate: -1.0"),
    ({"policy_kwargs": {"features_extractor_class": "Flatten"}},
     "algorithm.hyperparams.policy_kwargs: unknown features_extractor_class 'Flatten'; use FlattenExtractor, NatureCNN, "
     "CombinedExtractor, or 'package.module:Class'"),
    ({"policy_kwargs": {"features_extractor_class": "os:system"}},
     "algorithm.hyperparams.policy_kwargs.features_extractor_class: PPO refuses this configuration: TypeError: "
     "features_extractor_class 'os:system' is not a BaseFeaturesExtractor subclass"),
    ({"gamma": "high"}, "algorithm.hyperparams.gamma: must be a number (default 0.99), got 'high'"),
    ({"n_steps": 12.5}, "algorithm.hyperparams.n_steps: must be an integer (default 2048), got 12.5"),
    ({"use_sde": "sometimes"}, "algorithm.hyperparams.use_sde: must be true or false, got 'sometimes'"),
])
def test_values_the_algorithm_rejects_are_found_by_building_it_once(hyperparams: dict[str, Any], message: str,
                                                                   refuse: Any, tmp_path: Path) -> None:
    spec = _sweepable(algorithm={"name": "ppo", "hyperparams": {"n_steps": 64, "batch_size": 64, **hyperparams}})
    assert message in refuse(_spec(tmp_path, spec), limit_s=30)  # the first build of a configuration imports torch


def test_a_configuration_that_builds_is_remembered(tmp_path: Path) -> None:
    from gymflow import buildcheck
    from gymflow.spec import AlgorithmSpec, EnvSpec

    pair = (EnvSpec(id="CartPole-v1", n_envs=3), AlgorithmSpec(name="a2c", hyperparams={"n_steps": 7}))
    assert buildcheck.check([pair]) == []
    started = time.monotonic()
    assert buildcheck.check([pair, pair]) == []
    assert time.monotonic() - started < 0.5  # no second process


@pytest.mark.parametrize("via", ["spec", "env"])
def test_an_unreachable_tracking_server_is_refused_quickly(via: str, refuse: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    spec = _sweepable(tracking={"uri": uri}) if via == "spec" else _sweepable()
    if via == "env":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    message = refuse(_spec(tmp_path, spec), limit_s=8)
    field = "tracking.uri" if via == "spec" else "MLFLOW_TRACKING_URI"
    assert f"{field}: the MLflow tracking store {uri} cannot be reached (Connection refused; waited at most 5 s)" in message
    assert "point tracking.uri or MLFLOW_TRACKING_URI at one that runs; GYMFLOW_TRACKING_CHECK_S sets the wait" in message


def test_a_silent_tracking_server_is_given_up_on_after_the_set_wait(refuse: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GYMFLOW_TRACKING_CHECK_S", "1")
    # 192.0.2.0/24 is reserved for documentation: nothing answers there
    message = refuse(_spec(tmp_path, _sweepable(tracking={"uri": "http://192.0.2.1:5000"})), commands=("validate",), limit_s=4)
    assert "tracking.uri: the MLflow tracking store http://192.0.2.1:5000 cannot be reached" in message


@pytest.mark.parametrize(("uri", "message"), [
    ("sqlite:///{tmp}/afile/mlflow.db", "tracking.uri: {tmp}/afile is a file, so the folder of the MLflow database {tmp}/afile "
                                        "cannot be created under it"),
    ("./mlruns", "tracking.uri: './mlruns' is a file store, which MLflow 3 keeps only in maintenance mode; use sqlite:///mlflow.db"),
])
def test_tracking_stores_mlflow_cannot_use_are_refused(uri: str, message: str, refuse: Any, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    text = refuse(_spec(tmp_path, _sweepable(tracking={"uri": uri.format(tmp=tmp_path)})))
    assert message.format(tmp=tmp_path) in text


def test_a_bad_globals_file_and_a_bad_override_are_reported_with_the_spec_problems(refuse: Any, tmp_path: Path) -> None:
    globals_file = tmp_path / "globals.yaml"
    globals_file.write_text("a: [1\n")
    message = refuse(_spec(tmp_path, _sweepable()), "--globals", globals_file, "--set", "budget")
    assert f"{globals_file}: invalid YAML: line 2, column 1" in message
    assert "--set: expected dotted.path=value, got 'budget'" in message


def test_version_and_help(cli: Any) -> None:
    from importlib.metadata import version

    assert cli("--version").stdout.strip() == f"gymflow {version('gymflow')}"
    help_text = cli("run", "--help").stdout
    assert "<bool>" not in help_text and "PATH=VALUE" in help_text and "SPEC" in help_text


def test_a_spec_from_init_still_validates_and_runs_no_check_twice(cli: Any, tmp_path: Path) -> None:
    spec = copy.deepcopy(base_spec())
    result = cli("validate", _spec(tmp_path, spec))
    assert result.code == 0 and "is valid (trial ppo-s0-" in result.stderr


def test_thousands_of_problems_make_a_short_message(refuse: Any, tmp_path: Path) -> None:
    spec = base_spec(**{f"{'k' * 40}{i}": i for i in range(3000)})
    message = refuse(_spec(tmp_path, spec))
    assert message.startswith("error: 3000 problems") and "… and 2950 more" in message and len(message) < 20_000


@pytest.mark.parametrize(("text", "message"), [
    ("name: x\non: 3\n", "refused YAML: line 2, column 1: the key 'on' reads as bool True; every key in a spec is a name: quote it"),
    ("name: x\nenv: {0E0: 1}\n", "refused YAML: line 2, column 7: the key '0E0' reads as float 0.0"),
    ("name: x\x00\n", "invalid YAML: line 1, column 8: the control character U+0000 is not allowed in YAML; remove it"),
])
def test_keys_that_are_not_names_and_control_characters_are_refused(text: str, message: str, refuse: Any, tmp_path: Path) -> None:
    assert message in refuse(_spec(tmp_path, text))


@pytest.mark.parametrize(("sets", "message"), [
    (["storage="], "storage: must not be empty"),
    (["tracking.experiment="], "tracking.experiment: must not be empty"),
    (["algorithm.device=cuda"], "algorithm.device: cuda was asked for, but this machine has no NVIDIA GPU"),
    (["sweep.dask_address=tcp://127.0.0.1:9"], "sweep.dask_address: the Dask scheduler tcp://127.0.0.1:9 cannot be reached "
                                               "(Connection refused; waited at most 5 s)"),
    (["sweep.dask_address=inproc://x"], "sweep.dask_address: cannot reach a Dask scheduler at 'inproc://x': use tcp://HOST:PORT"),
    (["storage=s3://bucket/runs"], "storage: unknown scheme 's3' in 's3://bucket/runs'; use a local path, file://, gs:// or az://"),
    (["env=[1, 2]"], "env: must be a mapping, got list [1, 2]"),
    (["storage=gs://Bad_Bucket/runs"], "storage: 'gs://Bad_Bucket/runs': 'Bad_Bucket' is not a bucket name"),
    (["storage=az://account/x/runs"], "storage: 'az://account/x/runs': 'x' is not a container name"),
    (["algorithm.hyperparams.policy_kwargs=__import__('os').system('touch pwned')"],
     "algorithm.hyperparams.policy_kwargs: cannot parse \"__import__('os').system('touch pwned')\" as a mapping"),
])
def test_command_line_overrides_are_checked_like_the_file(sets: list[str], message: str, refuse: Any, tmp_path: Path) -> None:
    if "cuda" in message and Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this machine has an NVIDIA GPU")
    args = [a for s in sets for a in ("--set", s)]
    assert message in refuse(_spec(tmp_path, _sweepable()), *args)


def test_an_override_path_deeper_than_any_spec_is_refused(refuse: Any, tmp_path: Path) -> None:
    message = refuse(_spec(tmp_path, _sweepable()), "--set", "a." * 20_000 + "b=1")
    assert "--set: the path 'a.a.a.a" in message and "is more than 64 levels deep" in message and len(message) < 500


def test_an_env_that_builds_but_cannot_step_is_found_by_the_build_check(refuse: Any, tmp_path: Path) -> None:
    spec = _sweepable(env={"id": "sim_envs:ExplodingEnv", "n_envs": 2, "kwargs": {"fail_after": 0}})
    message = refuse(_spec(tmp_path, spec), limit_s=30)
    assert "env: the env could not be created and stepped: RuntimeError: simulator diverged" in message


def test_a_boolean_is_not_a_number(refuse: Any, tmp_path: Path) -> None:
    assert "seed: must be a number, got true" in refuse(_spec(tmp_path, _sweepable(seed=True)))


@pytest.mark.parametrize(("target", "message"), [
    ("folder", "spec file {path} is a folder; give the YAML file in it"),
    ("/dev/null", "spec file /dev/null is not a regular file; give a YAML file"),
])
def test_a_spec_path_that_is_not_a_file_says_what_it_is(target: str, message: str, refuse: Any, tmp_path: Path) -> None:
    path = tmp_path / "folder" if target == "folder" else Path(target)
    path.mkdir(exist_ok=True) if target == "folder" else None
    assert message.format(path=path) in refuse(path)


def test_a_build_check_that_takes_too_long_says_how_to_wait_longer(refuse: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GYMFLOW_BUILD_CHECK_S", "0.05")
    spec = _sweepable(algorithm={"name": "a2c", "hyperparams": {"n_steps": 9}})  # a configuration not cached yet
    message = refuse(_spec(tmp_path, spec), commands=("validate",))
    assert ("env: building the algorithm on the env took longer than 0.05 s, so it could not be checked; a slow env "
            "constructor? Raise GYMFLOW_BUILD_CHECK_S (seconds), or set it to 0 to skip this check") in message
