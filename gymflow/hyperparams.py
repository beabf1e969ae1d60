"""Parse hyperparameters in the formats rl-baselines3-zoo users know, without eval.

Everything here is pure: values are checked and put into a canonical, JSON-friendly
form (a schedule stays the string ``lin_0.001``, an activation function becomes its
canonical name). ``gymflow.runtime.algorithms`` turns the canonical form into objects.
"""

from __future__ import annotations

import ast
import re
from typing import Any

SCHEDULE_RE = re.compile(r"^lin_(?P<value>[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)$")

ACTIVATIONS: dict[str, str] = {
    "relu": "ReLU",
    "tanh": "Tanh",
    "elu": "ELU",
    "selu": "SELU",
    "gelu": "GELU",
    "silu": "SiLU",
    "leaky_relu": "LeakyReLU",
    "leakyrelu": "LeakyReLU",
    "sigmoid": "Sigmoid",
    "softplus": "Softplus",
    "mish": "Mish",
}
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd", "rmsproptflike")
NOISE_TYPES = ("normal", "ornstein-uhlenbeck")
TRAIN_FREQ_UNITS = ("step", "episode")
_NN_PREFIXES = ("nn.", "th.nn.", "torch.nn.")


class HyperparamError(ValueError):
    """A hyperparameter value that cannot be understood; the message says what is allowed."""


def parse_schedule(key: str, value: Any) -> float | str:
    """A number, or a ``lin_<x>`` linear schedule from x down to 0."""
    if isinstance(value, bool):
        raise HyperparamError(f"expected a number or 'lin_<number>', got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if SCHEDULE_RE.match(text):
            return text
        try:
            return float(text)
        except ValueError:
            pass
    raise HyperparamError(
        f"malformed schedule {value!r}: use a number (3e-4) or a linear schedule "
        f"'lin_<start>' (lin_0.001), which decays from start to 0 over training"
    )


def schedule_start(value: float | str) -> float:
    """The initial value of a parsed schedule."""
    if isinstance(value, str):
        match = SCHEDULE_RE.match(value)
        if match is None:
            raise HyperparamError(f"malformed schedule {value!r}: use 'lin_<start>'")
        return float(match.group("value"))
    return float(value)


def canonical_activation(value: Any) -> str:
    """'nn.Tanh', 'Tanh' or 'tanh' -> 'tanh'."""
    if isinstance(value, str):
        name = value.strip()
        for prefix in _NN_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        key = name.lower()
        if key in ACTIVATIONS:
            return key
    raise HyperparamError(
        f"unknown activation function {value!r}; allowed: {', '.join(sorted(ACTIVATIONS))}"
    )


def _literal(node: ast.AST) -> Any:
    """Evaluate a restricted expression tree: literals, lists, dicts, dict(...), nn.Name."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise HyperparamError("'**' is not allowed")
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}  # type: ignore[arg-type]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if node.args or any(kw.arg is None for kw in node.keywords):
            raise HyperparamError("dict(...) takes keyword arguments only")
        return {kw.arg: _literal(kw.value) for kw in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _literal(node.operand)
        if isinstance(operand, (int, float)):
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, (ast.Attribute, ast.Name)):
        return ast.unparse(node)
    raise HyperparamError(f"unsupported expression {ast.unparse(node)!r}")


def parse_mapping(value: Any) -> dict[str, Any]:
    """A mapping, or a zoo-style string such as "dict(net_arch=[64, 64], activation_fn=nn.Tanh)"."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str):
        try:
            tree = ast.parse(value.strip(), mode="eval")
            result = _literal(tree.body)
        except (SyntaxError, HyperparamError) as exc:
            raise HyperparamError(f"cannot parse {value!r} as a mapping ({exc})") from None
        if isinstance(result, dict):
            return result
    raise HyperparamError(f"expected a mapping such as {{net_arch: [64, 64]}}, got {value!r}")


def _net_arch(value: Any) -> list[int] | dict[str, list[int]]:
    def layers(v: Any) -> list[int]:
        if isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
            return list(v)
        raise HyperparamError(f"net_arch layers must be a list of positive integers, got {v!r}")

    if isinstance(value, dict):
        return {str(k): layers(v) for k, v in value.items()}
    return layers(value)


EXTRACTORS = ("FlattenExtractor", "NatureCNN", "CombinedExtractor")
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _extractor(value: Any) -> str:
    """An SB3 features extractor by name, or 'package.module:Class' of your own."""
    if isinstance(value, str):
        name = value.strip().split(".")[-1] if ":" not in value else value.strip()
        if name in EXTRACTORS or _ENTRY_POINT.match(name):
            return name
    raise HyperparamError(f"unknown features_extractor_class {value!r}; use {', '.join(EXTRACTORS)}, "
                          "or 'package.module:Class' for a BaseFeaturesExtractor subclass of your own")


def parse_policy_kwargs(value: Any) -> dict[str, Any]:
    """Canonical policy_kwargs: activation and optimizer by name, net_arch checked."""
    kwargs = parse_mapping(value)
    out: dict[str, Any] = {}
    for key, item in kwargs.items():
        if key == "activation_fn":
            out[key] = canonical_activation(item)
        elif key == "net_arch":
            out[key] = _net_arch(item)
        elif key == "optimizer_class":
            name = str(item).split(".")[-1].lower()
            if name not in OPTIMIZERS:
                raise HyperparamError(f"unknown optimizer_class {item!r}; allowed: {', '.join(OPTIMIZERS)}")
            out[key] = name
        elif key == "features_extractor_class":
            out[key] = _extractor(item)
        elif key in ("optimizer_kwargs", "features_extractor_kwargs"):
            out[key] = parse_mapping(item)
        else:
            out[key] = item
    return out


def parse_train_freq(value: Any) -> int | list[Any]:
    """An integer, or [n, 'step'|'episode']."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        count, unit = value
        if isinstance(count, int) and count >= 1 and unit in TRAIN_FREQ_UNITS:
            return [count, unit]
    raise HyperparamError(f"train_freq must be a positive integer or [n, 'step'|'episode'], got {value!r}")


def parse_hyperparams(values: dict[str, Any], schedule_keys: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """Canonical hyperparameters and a {key: message} map of the values that are wrong."""
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, value in values.items():
        try:
            out[key] = _parse_one(key, value, schedule_keys)
        except HyperparamError as exc:
            errors[key] = str(exc)
    return out, errors


def _parse_one(key: str, value: Any, schedule_keys: tuple[str, ...]) -> Any:
    if key in schedule_keys:
        return parse_schedule(key, value)
    if key == "policy_kwargs":
        return parse_policy_kwargs(value)
    if key == "train_freq":
        return parse_train_freq(value)
    if key == "noise_type":
        if value not in NOISE_TYPES:
            raise HyperparamError(f"unknown noise_type {value!r}; allowed: {', '.join(NOISE_TYPES)}")
        return value
    if key == "noise_std":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise HyperparamError(f"noise_std must be a positive number, got {value!r}")
        return float(value)
    if key == "replay_buffer_kwargs":
        return parse_mapping(value)
    return value
