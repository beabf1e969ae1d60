"""Build each algorithm once on its env, in a process of its own: what validation cannot see statically.

``gymflow.buildcheck`` runs ``python -m gymflow.runtime.probe`` with a JSON list of
``{"env": EnvSpec, "algorithm": AlgorithmSpec}`` on stdin and reads one list of problems per
item from stdout. A value the algorithm rejects (``n_steps: 0``, a features extractor that
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

from gymflow.errors import Problem, clip
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


def probe(env: EnvSpec, algo: AlgorithmSpec) -> list[Problem]:
    """Problems building `algo` on `env` (an empty list when it builds)."""
    from gymflow.runtime.algorithms import build_model
    from gymflow.runtime.envs import build_vec_env

    gamma = float(algo.hyperparams.get("gamma", 0.99))
    try:
        venv = build_vec_env(env.model_copy(update={"vectorization": "dummy"}), 0, env.n_envs, training=True, gamma=gamma)
    except Exception as exc:  # noqa: BLE001 - whatever the simulator raised is the user's to see
        return [Problem("env", f"the env could not be created: {type(exc).__name__}: {clip(str(exc))}. "
                               "Check env.id, env.kwargs and env.wrappers")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_model(algo, venv, seed=0, device="cpu")
    except Exception as exc:  # noqa: BLE001 - the algorithm's own message, tied to the field it names
        text = str(exc) or type(exc).__name__
        cls = algo.info.cls
        return [Problem(field_of(text, algo), f"{cls} refuses this configuration: {type(exc).__name__}: "
                                              f"{clip(text)}. Change the value (checked by building "
                                              f"{cls} once on {env.id})")]
    finally:
        venv.close()
    return []


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    items: list[dict[str, Any]] = json.load(sys.stdin)
    out = []
    for item in items:
        problems = probe(EnvSpec.model_validate(item["env"]), AlgorithmSpec.model_validate(item["algorithm"]))
        out.append([{"path": p.path, "message": p.message} for p in problems])
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
