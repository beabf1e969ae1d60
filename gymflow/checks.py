"""Checks of a spec that need imports: env ids, wrappers, hyperparameter names, spaces.

``gymflow.spec`` checks shapes and values; this module checks the spec against the
installed libraries, so that a typo fails in ``gymflow validate``, not on a GPU VM.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from difflib import get_close_matches
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gymflow import algorithms, hyperparams
from gymflow.errors import Problem
from gymflow.imports import import_object
from gymflow.paths import cache_dir, read_cache, write_cache
from gymflow.spec import ENTRY_POINT_RE, AlgorithmSpec, EnvSpec

logger = logging.getLogger(__name__)
_M = TypeVar("_M", bound=BaseModel)

# Constructor arguments gymflow sets itself, and the zoo keys it understands on top.
_RESERVED = {"self", "policy", "env", "seed", "device", "verbose", "tensorboard_log", "_init_setup_model", "supported_action_spaces"}
_ZOO_EXTRAS = {"noise_type", "noise_std"}
_NOISE_ALGOS = {"td3", "ddpg", "sac", "tqc"}


def _describe_import_error(path: str, exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError):
        return f"cannot import {path!r}: module {exc.name!r} not found. Install it or fix the path ('package.module:Class')"
    if isinstance(exc, AttributeError):
        return f"cannot import {path!r}: {exc}. Check the class name after ':'"
    return f"cannot import {path!r}: {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class AlgoFacts:
    """What validation needs from an algorithm class: its settable arguments and its policies' arguments."""

    hyperparams: frozenset[str]
    policies: dict[str, list[str] | None]  # policy alias -> constructor arguments (None: it takes **kwargs)


def _introspect(name: str) -> AlgoFacts:
    cls = algorithms.get(name).load()
    params = set(inspect.signature(cls.__init__).parameters) - _RESERVED - {"args", "kwargs"}
    if name in _NOISE_ALGOS:
        params |= _ZOO_EXTRAS
    policies: dict[str, list[str] | None] = {}
    for alias, policy_cls in getattr(cls, "policy_aliases", {}).items():
        signature = inspect.signature(policy_cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()):
            policies[alias] = None
        else:
            policies[alias] = sorted(set(signature) - {"self", "observation_space", "action_space", "lr_schedule"})
    return AlgoFacts(frozenset(params), policies)


def _cache_file() -> Path:
    """Introspection results are cached per installed SB3 / sb3-contrib / gymflow version: importing the
    algorithm classes (torch) costs seconds and hundreds of MB the orchestrator otherwise never needs."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("stable_baselines3", "sb3_contrib", "gymflow"):
        try:
            parts.append(f"{dist}={version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist}=none")

    key = hashlib.sha256(";".join(parts).encode()).hexdigest()[:16]
    return cache_dir() / f"algorithms-{key}.json"


def _as_json(facts: AlgoFacts) -> dict[str, Any]:
    return {"hyperparams": sorted(facts.hyperparams), "policies": facts.policies}


def facts_of_all() -> dict[str, dict[str, Any]]:
    """Every algorithm's facts that can be introspected here, as JSON (what the subprocess prints)."""
    out = {}
    for name in algorithms.ALGORITHMS:
        try:
            out[name] = _as_json(_introspect(name))
        except Exception:  # noqa: BLE001 - an algorithm that does not import is reported when a spec asks for it
            logger.debug("cannot introspect %s", name, exc_info=True)
    return out


def _introspect_elsewhere() -> dict[str, Any]:
    """facts_of_all() from a subprocess: importing the classes loads torch (~170 MB) into a process that never
    trains. {} when the subprocess fails; the caller then introspects here."""
    code = "import json, sys; from gymflow.checks import facts_of_all; sys.stdout.write(json.dumps(facts_of_all()))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "CUDA_VISIBLE_DEVICES": ""}
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, check=True)
        found = json.loads(done.stdout)
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError, subprocess.SubprocessError):
        logger.debug("introspecting the algorithms in a subprocess failed", exc_info=True)
        return {}


@lru_cache(maxsize=None)
def algo_facts(name: str) -> AlgoFacts:
    """The algorithm's facts, from the version-keyed cache or by introspecting every class once, in a subprocess."""
    file = _cache_file()
    data = read_cache(file)
    if name not in data:
        data.update(_introspect_elsewhere())
        if name not in data:
            data[name] = _as_json(_introspect(name))  # the import error, if any, is raised here
        write_cache(file, data)
    try:
        cached = data[name]
        return AlgoFacts(frozenset(cached["hyperparams"]), cached["policies"])
    except (KeyError, TypeError):
        return _introspect(name)


def valid_hyperparams(name: str) -> frozenset[str]:
    """Constructor arguments of an algorithm that a spec may set."""
    return algo_facts(name).hyperparams


def _salvage(model: type[_M], raw: Any) -> _M | None:
    """The section validated without the fields that are wrong by themselves, so the checks that need
    imports still run on the rest: a misspelt key next to a misspelt env id reports both at once."""
    if not isinstance(raw, dict):
        return None
    data = dict(raw)
    for _ in range(3):
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        bad = {str(e["loc"][0]) for e in errors if e["loc"]}
        keys = {str((e.get("ctx") or {}).get("key")) for e in errors if e["type"] == "hyperparam"}
        if keys and isinstance(data.get("hyperparams"), dict):
            data["hyperparams"] = {k: v for k, v in data["hyperparams"].items() if k not in keys}
        if not bad and not keys:
            return None
        data = {k: v for k, v in data.items() if k not in bad}
    return None


def hyperparam_problems(raw_algo: Any) -> list[Problem]:
    """Every hyperparameter value that cannot be understood (the model reports only the first)."""
    if not isinstance(raw_algo, dict) or not isinstance(raw_algo.get("hyperparams"), dict):
        return []
    name = algorithms.canonical_name(str(raw_algo.get("name", "")))
    if name is None:
        return []
    _, errors = hyperparams.parse_hyperparams(raw_algo["hyperparams"], algorithms.get(name).schedule_keys)
    return [Problem(f"algorithm.hyperparams.{key}", message) for key, message in errors.items()]


def deep_checks(data: dict[str, Any]) -> list[Problem]:
    """Checks against installed libraries on every section, as far as it is valid by itself (each distinct
    env and algorithm once per process: a sweep's trials mostly share them)."""
    key = json.dumps([data.get("env"), data.get("algorithm")], sort_keys=True, default=repr)
    if key not in _DEEP_MEMO:
        if len(_DEEP_MEMO) > 256:
            _DEEP_MEMO.clear()
        _DEEP_MEMO[key] = _deep_checks(data)
    return list(_DEEP_MEMO[key])


_DEEP_MEMO: dict[str, list[Problem]] = {}


def sections(data: dict[str, Any]) -> tuple[EnvSpec | None, AlgorithmSpec | None]:
    """The env and algorithm sections of a raw spec, each as far as it is valid by itself."""
    from gymflow.spec import Spec

    try:
        data = Spec._lift_zoo_keys(data)  # type: ignore[operator]
    except ValueError:
        pass
    return _salvage(EnvSpec, data.get("env")), _salvage(AlgorithmSpec, data.get("algorithm"))


def _deep_checks(data: dict[str, Any]) -> list[Problem]:
    env, algo = sections(data)
    problems = hyperparam_problems(data.get("algorithm"))
    if env is not None:
        problems += check_env(env)
    if algo is not None:
        problems += check_algorithm(algo)
    if env is not None and algo is not None and not problems:
        problems += check_spaces(env, algo)
    return problems


def check_env(env: EnvSpec) -> list[Problem]:
    """The env id resolves and every wrapper imports."""
    problems: list[Problem] = []
    problem = _check_env_id(env.id)
    if problem:
        problems.append(Problem("env.id", problem))
    for i, wrapper in enumerate(env.wrappers):
        try:
            obj = import_object(wrapper.path)
        except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix
            problems.append(Problem(f"env.wrappers.{i}.path", _describe_import_error(wrapper.path, exc)))
            continue
        import gymnasium

        if not (isinstance(obj, type) and issubclass(obj, gymnasium.Wrapper)):
            problems.append(Problem(f"env.wrappers.{i}.path", f"{wrapper.path!r} is not a gymnasium.Wrapper subclass; "
                                                              "give a wrapper class"))
    return problems


def _check_env_id(env_id: str) -> str | None:
    import gymnasium

    if ENTRY_POINT_RE.match(env_id):
        module_name, _, attr = env_id.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001
            return _describe_import_error(env_id, exc)
        if attr in gymnasium.envs.registry and not hasattr(module, attr.split(".")[0]):
            return None  # importing the module registered the id
        try:
            obj = import_object(env_id)
        except AttributeError:
            return f"{module_name!r} has no class {attr!r} and registers no env of that id"
        if isinstance(obj, type) and issubclass(obj, gymnasium.Env):
            return None
        return (f"{env_id!r} is not a gymnasium.Env subclass; give an env class, or register a factory with "
                "gymnasium.register in that module and use 'module:EnvId'")
    from gymflow.runtime.envs import registered

    if registered(env_id):  # gymnasium's own, or one an installed package registers through an entry point
        return None
    close = get_close_matches(env_id, list(gymnasium.envs.registry), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
    return (f"environment {env_id!r} is not registered in gymnasium.{hint} For your own env use 'package.module:Class', "
            "or install a package that registers it (entry point group gymnasium.envs)")


def check_algorithm(algo: AlgorithmSpec) -> list[Problem]:
    """Hyperparameter names, policy and policy_kwargs are valid for the algorithm."""
    problems: list[Problem] = []
    valid = valid_hyperparams(algo.name)
    for key in algo.hyperparams:
        if key not in valid:
            close = get_close_matches(key, valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(
                Problem(f"algorithm.hyperparams.{key}", f"unknown hyperparameter for {algo.name}.{hint} Valid: {', '.join(sorted(valid))}")
            )
    policies = algo_facts(algo.name).policies
    if algo.policy is not None and algo.policy not in policies:
        problems.append(Problem("algorithm.policy", f"unknown policy {algo.policy!r} for {algo.name}; allowed: {', '.join(sorted(policies))}"))
        return problems
    policy_kwargs = algo.hyperparams.get("policy_kwargs")
    allowed = policies.get(algo.policy_name)
    if isinstance(policy_kwargs, dict) and allowed is not None:
        for key in policy_kwargs:
            if key not in allowed:
                close = get_close_matches(key, allowed, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                problems.append(Problem(f"algorithm.hyperparams.policy_kwargs.{key}",
                                        f"not an argument of {algo.policy_name}.{hint} Valid: {', '.join(sorted(allowed))}"))
    return problems


def check_spaces(env: EnvSpec, algo: AlgorithmSpec) -> list[Problem]:
    """Create one env and check that the algorithm supports its action space."""
    from gymflow.runtime.envs import make_single_env

    try:
        instance = make_single_env(env, seed=0)
    except Exception as exc:  # noqa: BLE001 - report whatever the simulator raised
        return [Problem("env", f"the env could not be created: {type(exc).__name__}: {exc}. Check env.id and env.kwargs")]
    try:
        supported = algo.info.action_spaces
        space = type(instance.action_space).__name__
        if space not in supported:
            names = ", ".join(supported)
            return [Problem("algorithm.name", f"{algo.name} supports {names} action spaces; {env.id} has {space}. Pick another algorithm")]
        return check_scenario(env, instance)
    finally:
        instance.close()


def check_scenario(env: EnvSpec, instance: Any) -> list[Problem]:
    """Each env.scenario option is one the env's reset takes: among those it declares in
    metadata["reset_options"], else its reset with drawn values must not raise."""
    if not env.scenario:
        return []
    declared = instance.unwrapped.metadata.get("reset_options")
    name = type(instance.unwrapped).__name__
    if declared is not None:
        return [Problem(f"env.scenario.{key}", f"{name}.reset does not take the option {key!r}; it takes "
                                                f"{', '.join(map(str, declared)) or 'none'}. Rename or remove it")
                for key in env.scenario if key not in declared]
    try:
        instance.reset(seed=0)  # the scenario wrapper draws every option and hands them to the env's reset
    except Exception as exc:  # noqa: BLE001 - whatever the simulator raised is the user's to see
        return [Problem("env.scenario", f"{name}.reset refused the options {', '.join(env.scenario)} drawn from the "
                                        f"scenario: {type(exc).__name__}: {exc}. Name only options its reset takes")]
    return []
