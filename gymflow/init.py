"""`gymflow init`: a complete, valid, commented spec with tuned hyperparameters."""

from __future__ import annotations

import json
import re
from difflib import get_close_matches
from importlib import resources
from typing import Any

import yaml

from gymflow import algorithms
from gymflow.errors import Problem, SpecError


def tuned_table() -> dict[str, dict[str, Any]]:
    """The shipped table of tuned hyperparameters: {algorithm: {env id | 'default': entry}}."""
    text = resources.files("gymflow.data").joinpath("tuned.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def tuned_entry(algo: str, env_id: str) -> tuple[dict[str, Any], bool]:
    """The tuned entry for (algo, env), or the algorithm's default; and whether it was tuned."""
    table = tuned_table().get(algo, {})
    if env_id in table:
        return table[env_id], True
    return table.get("default", {"timesteps": 1_000_000}), False


def _reward_threshold(env_id: str) -> str:
    """', reward_threshold: X' from the gymnasium registry when the env defines one."""
    try:
        import gymnasium

        value = gymnasium.envs.registry[env_id].reward_threshold
    except (ImportError, KeyError):
        return ""
    return f", reward_threshold: {value:g}" if value is not None else ""


def _flow(value: Any) -> str:
    """A compact one-line YAML rendering of a value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def render(algo_name: str, env_id: str, name: str | None = None) -> str:
    """The spec text for `gymflow init --algo ALGO --env ENV`."""
    algo = algorithms.canonical_name(algo_name)
    if algo is None:
        close = get_close_matches(algo_name.lower(), list(algorithms.ALGORITHMS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise SpecError([Problem("--algo", f"unknown algorithm {algo_name!r}.{hint} Known: {', '.join(algorithms.ALGORITHMS)}")])
    entry, tuned = tuned_entry(algo, env_id)
    timesteps = int(entry.get("timesteps", 1_000_000))
    every = max(1_000, timesteps // 10)
    eval_every = max(1_000, timesteps // 4)
    base = re.sub(r"-v\d+$", "", env_id.split(":")[-1].split("/")[-1]).lower()
    exp_name = name or f"{base}-{algo}".replace("_", "-")
    threshold = _reward_threshold(env_id)
    source = "tuned for this env (rl-baselines3-zoo)" if tuned else f"no tuned values for {env_id}: {algo} defaults"
    env: dict[str, Any] = {"id": env_id, "n_envs": int(entry.get("n_envs", 1))}
    if entry.get("normalize"):
        env["normalize"] = entry["normalize"]
    algorithm: dict[str, Any] = {"name": algo}
    if entry.get("policy"):
        algorithm["policy"] = entry["policy"]
    lines = [
        f"# gymflow experiment spec: {algo} on {env_id}. Check it with `gymflow validate FILE`.",
        f"name: {exp_name}                       # experiment name (MLflow experiment, run folders)",
        "env:",
        f"  id: {json.dumps(env_id)}                  # gymnasium id, or 'package.module:Class'",
        f"  n_envs: {env['n_envs']}                      # parallel training envs",
        "  vectorization: dummy           # dummy (in-process) or subprocess",
    ]
    if "normalize" in env:
        lines.append(f"  normalize: {_flow(env['normalize'])}            # VecNormalize (true or options)")
    lines += [
        "  # wrappers: ['package.module:Wrapper']   # gymnasium wrappers, in order",
        "  # scenario: {option: {min: 0.0, max: 1.0}}  # reset options drawn per episode",
        "algorithm:",
        f"  name: {algo}",
    ]
    if "policy" in algorithm:
        lines.append(f"  policy: {algorithm['policy']}")
    lines.append(f"  # hyperparameters: {source}")
    params = entry.get("hyperparams") or {}
    lines.append(f"  hyperparams: {_flow(params)}" if not params else "  hyperparams:")
    lines += [f"    {k}: {_flow(v)}" for k, v in params.items()]
    lines += [
        "budget:",
        f"  timesteps: {timesteps}              # or episodes: N (exactly one)",
        "seed: 0",
        "evaluation:",
        f"  every_timesteps: {eval_every}          # periodic evaluation on a separate env",
        "  episodes: 10                   # episodes per evaluation",
        "  deterministic: true",
        "  keep_best: true                # final model = best evaluated model",
        f"  # early_stopping: {{patience: 5{threshold}}}",
        "checkpoint:",
        f"  every_timesteps: {every}          # a rerun resumes from the newest checkpoint",
        "  keep: 2",
        "storage: ./runs/${experiment}/${trial_id}   # local path (gs://, az:// with their backends)",
        "backend:",
        "  kind: local",
        "",
    ]
    return "\n".join(_align(line) for line in lines)


def _align(line: str, column: int = 40) -> str:
    """Put a trailing '# comment' at a fixed column."""
    code, sep, comment = line.partition("  # ")
    if not sep or not code.strip() or code.lstrip().startswith("#"):
        return line
    return f"{code.rstrip() + '  ':<{column}}# {comment}"
