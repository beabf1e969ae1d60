"""Which device a trial trains on: `algorithm.device: auto` picks the one known to be faster for the policy.

Measured on an H100 machine with 16 vCPUs (the figures that filed this rule; `bench/bench_device.py` prints
them for the machine it runs on):

- PPO, CartPole-v1, MLP 64x64: 1,690 steps/s on the GPU against 2,600-3,300 on one CPU thread. An on-policy
  algorithm's small MLP does too little per batch to pay for moving it to the GPU (SB3 warns the same).
- SAC, Pendulum-v1, MLP 256x256: 83 steps/s on the GPU against 66-70 on one CPU thread; the GPU wins a little
  once the networks are this wide and every step trains on a batch from the replay buffer.
- Convolutional policies (image observations) are what GPUs are for.

So: convolutional -> cuda; on-policy with an MLP -> cpu; off-policy with an MLP whose widest layer has at least
GPU_MIN_WIDTH units -> cuda, narrower -> cpu. Without a CUDA device everything is cpu, and `device: cuda` there
is refused instead of silently training on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gymflow.errors import GymflowError
from gymflow.spec import AlgorithmSpec

ON_POLICY = frozenset({"ppo", "a2c", "trpo", "recurrentppo", "ars"})
DEFAULT_WIDTH = {"sac": 256, "td3": 256, "tqc": 256, "ddpg": 400}  # SB3's default net_arch; 64 for the others
GPU_MIN_WIDTH = 256


class NoCudaError(GymflowError):
    """`algorithm.device: cuda` on a machine where torch sees no CUDA device."""


@dataclass(frozen=True)
class Choice:
    device: str
    reason: str


def widest(algo: AlgorithmSpec) -> int:
    """The widest layer of the policy's MLP: from policy_kwargs.net_arch, else the algorithm's default."""
    kwargs = algo.hyperparams.get("policy_kwargs")
    arch = kwargs.get("net_arch") if isinstance(kwargs, dict) else None
    sizes = list(_ints(arch)) if arch is not None else []
    return max(sizes) if sizes else DEFAULT_WIDTH.get(algo.name, 64)


def _ints(node: Any) -> Any:
    if isinstance(node, bool):
        return
    if isinstance(node, int):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _ints(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _ints(value)


def auto(algo: AlgorithmSpec, policy: str) -> Choice:
    """The faster device for this algorithm and policy on a machine with a CUDA GPU."""
    if "cnn" in policy.lower():
        return Choice("cuda", f"{policy} is convolutional")
    kind = "LSTM" if "lstm" in policy.lower() else "MLP"
    if algo.name in ON_POLICY:
        return Choice("cpu", f"{algo.name}'s {kind} policy trains faster on the CPU than on a GPU: on-policy, small batches")
    width = widest(algo)
    if width >= GPU_MIN_WIDTH:
        return Choice("cuda", f"{algo.name}'s {kind} policy is {width} units wide: off-policy and >= {GPU_MIN_WIDTH}, "
                              "faster on a GPU")
    return Choice("cpu", f"{algo.name}'s {kind} policy is only {width} units wide: faster on the CPU")


def choose(requested: str, algo: AlgorithmSpec, policy: str, cuda: bool) -> Choice:
    """The device to train on; NoCudaError for `cuda` where there is none."""
    if requested == "cuda" and not cuda:
        raise NoCudaError("algorithm.device: cuda was asked for, but torch on this machine sees no CUDA device "
                          "(no GPU, no driver, or a CPU-only torch build); set algorithm.device to auto or cpu, or run "
                          "on a machine with a GPU")
    if requested != "auto":
        return Choice(requested, f"algorithm.device is {requested}")
    if not cuda:
        return Choice("cpu", "no CUDA device on this machine")
    return auto(algo, policy)
