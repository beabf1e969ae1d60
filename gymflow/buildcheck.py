"""The orchestrator's side of the build check: each distinct (env, algorithm) built once, in a subprocess.

Cost: one Python process that imports torch and SB3 (~4 s on a 2-core machine) plus
~0.1 s per small model, paid the first time a configuration is seen. Results are cached
per configuration and installed library versions under ``~/.gymflow/cache``, so a second
``gymflow validate`` or ``gymflow run`` of the same spec spends nothing. The orchestrator
itself never imports torch. ``GYMFLOW_BUILD_CHECK_S`` bounds the wait (default 120 s);
0 skips the check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gymflow.errors import Problem, clip
from gymflow.paths import cache_dir, read_cache, seconds, write_cache
from gymflow.spec import AlgorithmSpec, EnvSpec

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "GYMFLOW_BUILD_CHECK_S"
DEFAULT_TIMEOUT_S = 120.0


def timeout_s() -> float:
    """The wait for the build check from GYMFLOW_BUILD_CHECK_S; 0 when it is switched off."""
    return seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("stable_baselines3", "sb3_contrib", "gymnasium", "torch", "gymflow"):
        try:
            parts.append(f"{dist}={version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist}=none")
    return ";".join(parts)


def _cache_file() -> Path:
    """Keyed by the installed versions and by the probe's own code, so an improved check is never answered from
    what an older one found."""
    from importlib.util import find_spec

    spec = find_spec("gymflow.runtime.probe")
    probe = Path(spec.origin).read_bytes() if spec is not None and spec.origin else b""
    key = hashlib.sha256(_versions().encode() + probe).hexdigest()[:16]
    return cache_dir() / f"builds-{key}.json"


def _key(item: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()


def check(pairs: Sequence[tuple[EnvSpec, AlgorithmSpec]]) -> list[Problem]:
    """Problems building each distinct (env, algorithm) pair once; [] when all build or the check is off."""
    limit = timeout_s()
    if not pairs or limit == 0:
        return []
    items: dict[str, dict[str, Any]] = {}
    for env, algo in pairs:
        item = {"env": env.model_dump(mode="json"), "algorithm": algo.model_dump(mode="json")}
        items.setdefault(_key(item), item)
    file = _cache_file()
    cached = read_cache(file)
    todo = {k: v for k, v in items.items() if k not in cached}
    if todo:
        found = _run_probe(list(todo.values()), limit)
        if isinstance(found, Problem):  # the check itself could not finish: nothing is cached
            return [found]
        fresh = dict(zip(todo, found))
        cached.update(fresh)
        write_cache(file, {**read_cache(file), **fresh})
    problems: list[Problem] = []
    for key in items:
        found = [Problem(path, message) for path, message in cached[key]["problems"]]
        problems += [p for p in found if p not in problems]
    return problems


def policy(env: EnvSpec, algo: AlgorithmSpec) -> str | None:
    """The policy the check built for this pair (e.g. MlpPolicy, CnnPolicy); None when it has not been built."""
    item = {"env": env.model_dump(mode="json"), "algorithm": algo.model_dump(mode="json")}
    found = read_cache(_cache_file()).get(_key(item))
    return found.get("policy") if isinstance(found, dict) else None


def _run_probe(items: list[dict[str, Any]], limit: float) -> list[dict[str, Any]] | Problem:
    """Each item's problems (as [path, message] pairs) and built policy, from one probe process; or why it failed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the user's env modules import as they do here
    env["CUDA_VISIBLE_DEVICES"] = ""  # built on the CPU: a GPU start-up buys nothing for a check
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "gymflow.runtime.probe"]
    logger.info("building %d algorithm configuration(s) once to check them", len(items))
    try:
        done = subprocess.run(command, input=json.dumps(items), capture_output=True, text=True, timeout=limit,
                              env=env, check=False)
    except subprocess.TimeoutExpired:
        return Problem("env", f"building the algorithm on the env took longer than {limit:g} s, so it could not be "
                              f"checked; a slow env constructor? Raise {TIMEOUT_ENV} (seconds), or set it to 0 to skip this check")
    try:
        out = json.loads(done.stdout)
        if done.returncode == 0 and isinstance(out, list) and len(out) == len(items):
            return [{"problems": [[p["path"], p["message"]] for p in found["problems"]], "policy": found["policy"]}
                    for found in out]
    except (ValueError, KeyError, TypeError):
        pass
    last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return Problem("env", f"building the algorithm on the env crashed the checking process (exit code "
                          f"{done.returncode}): {clip(last)}. Check env.id and env.kwargs; {TIMEOUT_ENV}=0 skips this check")
