"""Build each algorithm once on its env, in a process of its own: what validation cannot see statically.

``gymflow.buildcheck`` runs ``python -m gymflow.runtime.probe`` with a JSON list of
``{"env": EnvSpec, "algorithm": AlgorithmSpec}`` on stdin and reads, per item, its problems and
the policy built (what `algorithm.device: auto` decides by) from stdout. A value the algorithm rejects (``n_steps: 0``, a features extractor that
is not one) fails here, on the orchestrator's machine, with the algorithm's own message tied
to the field it names, not after a VM has booted. Nothing trains: the model is constructed
on the envs the worker would build (vectorised in-process) and dropped.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from typing import Any

import numpy as np

from gymflow.errors import Problem, clip, excerpt
from gymflow.spec import AlgorithmSpec, EnvSpec


def field_of(message: str, algo: AlgorithmSpec) -> str:
    """The hyperparameter an error message names first (as `n_steps` or `n steps`), else the section."""
    candidates = {key: f"algorithm.hyperparams.{key}" for key in algo.hyperparams}
    policy_kwargs = algo.hyperparams.get("policy_kwargs")
    if isinstance(policy_kwargs, dict):
        candidates.update({key: f"algorithm.hyperparams.policy_kwargs.{key}" for key in policy_kwargs})
    found: list[tuple[int, str]] = []
    for key, path in candidates.items():
        for form in {key, key.replace("_", " ")}:
            match = re.search(rf"(?<![A-Za-z0-9_]){re.escape(form)}(?![A-Za-z0-9_])", message, re.IGNORECASE)
            if match:
                found.append((match.start(), path))
    if found:
        return min(found)[1]
    return "algorithm.hyperparams" if algo.hyperparams else "algorithm"


_PARSED = {"train_freq", "policy_kwargs", "noise_type", "noise_std", "replay_buffer_kwargs"}


def value_types(algo: AlgorithmSpec) -> list[Problem]:
    """A hyperparameter whose constructor default is a number or a flag must be one: the constructor stores
    `gamma: high` without a word, and training fails on it later."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(algo.info.load().__init__).parameters.items()}
    problems = []
    for key, value in algo.hyperparams.items():
        default = defaults.get(key, inspect.Parameter.empty)
        if key in _PARSED or key in algo.info.schedule_keys:
            continue
        if isinstance(default, bool) and not isinstance(value, bool):
            problems.append(Problem(f"algorithm.hyperparams.{key}", f"must be true or false, got {excerpt(value)}"))
        elif isinstance(default, (int, float)) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(Problem(f"algorithm.hyperparams.{key}",
                                    f"must be a number (default {default!r}), got {excerpt(value)}"))
        elif isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) \
                and not value.is_integer():
            problems.append(Problem(f"algorithm.hyperparams.{key}", f"must be an integer (default {default}), got {value}"))
    return problems


def probe(env: EnvSpec, algo: AlgorithmSpec) -> tuple[list[Problem], str | None]:
    """Problems building `algo` on `env` (an empty list when it builds), and the policy it built (for the device
    `algorithm.device: auto` will pick)."""
    wrong = value_types(algo)
    if wrong:
        return wrong, None
    from gymflow.runtime.algorithms import build_model, policy_for
    from gymflow.runtime.envs import build_vec_env

    try:
        venv = build_vec_env(env.model_copy(update={"vectorization": "dummy"}), 0, env.n_envs, training=True, gamma=0.99)
        venv.reset()  # and one step: an env that builds but cannot run (a render mode, a kwarg used late) fails here
        venv.step(np.array([venv.action_space.sample() for _ in range(venv.num_envs)]))
    except Exception as exc:  # noqa: BLE001 - whatever the simulator raised is the user's to see
        return [Problem("env", f"the env could not be created and stepped: {type(exc).__name__}: {clip(str(exc))}. "
                               "Check env.id, env.kwargs and env.wrappers")], None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_model(algo, venv, seed=0, device="cpu")
    except Exception as exc:  # noqa: BLE001 - the algorithm's own message, tied to the field it names
        text = str(exc) or type(exc).__name__
        cls = algo.info.cls
        return [Problem(field_of(text, algo), f"{cls} refuses this configuration: {type(exc).__name__}: "
                                              f"{clip(text)}. Change the value (checked by building "
                                              f"{cls} once on {env.id})")], None
    finally:
        venv.close()
    return [], policy_for(algo, venv.observation_space)


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    items: list[dict[str, Any]] = json.load(sys.stdin)
    out = []
    for item in items:
        problems, policy = probe(EnvSpec.model_validate(item["env"]), AlgorithmSpec.model_validate(item["algorithm"]))
        out.append({"problems": [{"path": p.path, "message": p.message} for p in problems], "policy": policy})
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
