"""Property: whatever bytes or spec mutations `gymflow validate` is fed, it answers 0 or 2, never a traceback,
within seconds, and creates nothing where it runs.

The build check (each algorithm built once in a subprocess, ~4 s the first time a configuration is seen) is
switched off here so that hundreds of inputs fit in the suite; tests/test_bad_input.py covers it.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import base_spec

LIMIT_S = 5.0
SETTINGS = settings(max_examples=int(os.environ.get("GYMFLOW_PROPERTY_EXAMPLES", "120")), deadline=None, derandomize=not os.environ.get("GYMFLOW_PROPERTY_EXAMPLES"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=40), st.sampled_from(["lin_0.001", "CartPole-v1", "ppo", "${experiment}", "${a}",
                                                           "$${x}", "sim_envs:OptionEnv", "-1", "1e5", "tanh"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                      max_leaves=12)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec (with a sweep section) with a few fields replaced, deleted or added."""
    spec = copy.deepcopy(base_spec())
    spec["sweep"] = {"grid": {"algorithm.hyperparams.learning_rate": [0.001, 0.0003]}, "seeds": [0, 1]}
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(spec)
        path = draw(st.sampled_from(paths))
        parent: Any = spec
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(values)
    return spec


@pytest.fixture
def validate(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("GYMFLOW_BUILD_CHECK_S", "0")
    spec_file = tmp_path / "spec.yaml"

    def run(content: bytes) -> None:
        spec_file.write_bytes(content)
        started = time.monotonic()
        result = cli("validate", spec_file)
        took = time.monotonic() - started
        assert result.code in (0, 2), result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        assert result.code == 0 or "error: " in result.stderr, result.stderr
        assert took < LIMIT_S, (took, content[:200])
        assert os.listdir(work) == []

    return run


@SETTINGS
@given(content=st.binary(max_size=2000))
def test_random_bytes(validate: Any, content: bytes) -> None:
    validate(content)


@SETTINGS
@given(spec=mutated_specs())
def test_mutated_specs(validate: Any, tmp_path: Path, spec: dict[str, Any]) -> None:
    spec.setdefault("storage", str(tmp_path / "runs" / "${trial_id}"))
    validate(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True).encode())


@SETTINGS
@given(base=mutated_specs(), cut=st.integers(0, 10_000), insert=st.text(max_size=20))
def test_mutated_yaml_text(validate: Any, tmp_path: Path, base: dict[str, Any], cut: int, insert: str) -> None:
    base.setdefault("storage", str(tmp_path / "runs" / "${trial_id}"))
    text = yaml.safe_dump(base, sort_keys=False)
    at = cut % (len(text) + 1)
    validate((text[:at] + insert + text[at:]).encode("utf-8", "surrogatepass"))
