"""A continuous stirred-tank reactor (CSTR) as a gymnasium env: a custom simulation through gymflow.

The model is the textbook exothermic, irreversible first-order reaction A -> B in a jacketed CSTR (Seborg, Edgar,
Mellichamp & Doyle, *Process Dynamics and Control*; the parameters below are its common benchmark values):

    dCa/dt = q/V (Caf - Ca) - k(T) Ca
    dT/dt  = q/V (Tf - T) + (-dH)/(rho Cp) k(T) Ca + UA/(V rho Cp) (Tc - T)
    k(T)   = k0 exp(-E/(R T))

The agent sets the coolant temperature Tc (the jacket) every `dt_min` minutes to bring the concentration Ca to a
reference Cref. At Tc = 300 K the reactor sits at Ca = 0.877 mol/L, T = 324.5 K; warmer coolant speeds the
reaction up and lowers Ca, and past about 305 K of coolant the reaction heats itself faster than the jacket cools
it: thermal runaway, which ends the episode (T above `runaway_k`).

Reset options — the "lesson" a spec's `env.scenario` draws per episode:
- `cref`: the reference concentration (mol/L) to track; default 0.85 (the low-temperature steady states reach
  about 0.79 to 0.93);
- `noise`: measurement noise on Ca and T, in percent (Gaussian, relative); default 0;
- `ca0`, `t0`: the initial state; default the steady state at Tc = 300 K.
An option the env does not know is refused (ValueError naming the ones it takes), and `metadata["reset_options"]`
lists them, so `gymflow validate` can say so before anything runs.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["CSTREnv", "ENV_ID", "STEADY_300K", "derivatives", "register", "simulate"]

# The benchmark parameters
Q = 100.0  # feed flow, L/min
V = 100.0  # volume, L
RHO = 1000.0  # density, g/L
CP = 0.239  # heat capacity, J/(g K)
MINUS_DH = 5.0e4  # heat of reaction (exothermic), J/mol
E_OVER_R = 8750.0  # activation energy over the gas constant, K
K0 = 7.2e10  # pre-exponential factor, 1/min
UA = 5.0e4  # jacket heat transfer, J/(min K)
CAF = 1.0  # feed concentration, mol/L
TF = 350.0  # feed temperature, K

STEADY_300K = (0.8773, 324.48)  # (Ca mol/L, T K) at Tc = 300 K
TC_NOMINAL = 300.0
TC_SPAN = 10.0  # the action [-1, 1] sets Tc in [290, 310] K
REWARD_BAND = 0.1  # |Ca - Cref| at which a step earns nothing


def derivatives(ca: float, t: float, tc: float) -> tuple[float, float]:
    """(dCa/dt in mol/(L min), dT/dt in K/min) at concentration ca, reactor temperature t and coolant tc."""
    rate = K0 * math.exp(-E_OVER_R / t) * ca
    dca = Q / V * (CAF - ca) - rate
    dt = Q / V * (TF - t) + MINUS_DH / (RHO * CP) * rate + UA / (V * RHO * CP) * (tc - t)
    return dca, dt


def simulate(ca: float, t: float, tc: float, minutes: float, substeps: int = 20) -> tuple[float, float]:
    """The state after `minutes` at constant coolant tc (classic Runge-Kutta, `substeps` steps)."""
    h = minutes / substeps
    for _ in range(substeps):
        k1 = derivatives(ca, t, tc)
        k2 = derivatives(ca + h / 2 * k1[0], t + h / 2 * k1[1], tc)
        k3 = derivatives(ca + h / 2 * k2[0], t + h / 2 * k2[1], tc)
        k4 = derivatives(ca + h * k3[0], t + h * k3[1], tc)
        ca += h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        t += h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    return ca, t


class CSTREnv(gym.Env[np.ndarray, np.ndarray]):
    """Track a reference concentration with the coolant temperature.

    Observation (float32, scaled to about [-1, 1]): measured Ca, measured T, Cref, and the tracking error Ca - Cref.
    Action: one value in [-1, 1], the coolant temperature 300 + 10 a K. Reward per step: 1 - |Ca - Cref| / 0.1,
    floored at 0 (1 on target, 0 when 0.1 mol/L or more off). Terminated on thermal runaway (T > runaway_k) or an
    infeasible state; truncated after `minutes` of simulated time.
    """

    metadata = {"render_modes": [], "reset_options": ("cref", "noise", "ca0", "t0")}

    def __init__(self, dt_min: float = 0.1, minutes: float = 10.0, runaway_k: float = 400.0) -> None:
        self.dt_min = dt_min
        self.horizon = int(round(minutes / dt_min))
        self.runaway_k = runaway_k
        self.observation_space = spaces.Box(-5.0, 5.0, shape=(4,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.ca, self.t = STEADY_300K
        self.cref, self.noise = 0.85, 0.0
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.metadata["reset_options"]))
        if unknown:
            raise ValueError(f"CSTREnv.reset: unknown option(s) {', '.join(unknown)}; it takes "
                             f"{', '.join(self.metadata['reset_options'])}")
        self.cref = float(options.get("cref", 0.85))
        self.noise = float(options.get("noise", 0.0))
        if not 0.0 < self.cref < CAF:
            raise ValueError(f"CSTREnv.reset: cref {self.cref} must be between 0 and {CAF} mol/L (the feed)")
        if self.noise < 0:
            raise ValueError(f"CSTREnv.reset: noise {self.noise} must be a percentage >= 0")
        self.ca = float(options.get("ca0", STEADY_300K[0]))
        self.t = float(options.get("t0", STEADY_300K[1]))
        self.steps = 0
        return self._observe(), {"cref": self.cref, "noise": self.noise}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        tc = TC_NOMINAL + TC_SPAN * a
        self.ca, self.t = simulate(self.ca, self.t, tc, self.dt_min)
        self.steps += 1
        infeasible = not (math.isfinite(self.ca) and math.isfinite(self.t)) or self.ca < 0.0 or self.ca > CAF
        runaway = self.t > self.runaway_k
        error = abs(self.ca - self.cref) if not infeasible else REWARD_BAND
        reward = max(0.0, 1.0 - error / REWARD_BAND)
        info = {"ca": self.ca, "t": self.t, "tc": tc, "cref": self.cref, "runaway": runaway}
        return self._observe(), reward, runaway or infeasible, self.steps >= self.horizon, info

    def _observe(self) -> np.ndarray:
        ca, t = self.ca, self.t
        if self.noise > 0:
            ca *= 1.0 + self.np_random.normal(0.0, self.noise / 100.0)
            t *= 1.0 + self.np_random.normal(0.0, self.noise / 100.0)
        ca = ca if math.isfinite(ca) else 0.0
        t = t if math.isfinite(t) else self.runaway_k
        obs = [(ca - 0.5) / 0.5, (t - 350.0) / 50.0, (self.cref - 0.5) / 0.5, (ca - self.cref) / 0.5]
        return np.clip(np.asarray(obs, dtype=np.float32), -5.0, 5.0)


ENV_ID = "gymflow-examples/CSTR-v0"


def register() -> None:
    """Register the env with gymnasium as ENV_ID: what a package of yours points its `gymnasium.envs` entry point
    at (pyproject.toml: [project.entry-points."gymnasium.envs"] cstr = "examples.cstr:register"), so a spec can
    say `env.id: gymflow-examples/CSTR-v0` once the package is installed."""
    if ENV_ID not in gym.envs.registry:
        gym.register(id=ENV_ID, entry_point="examples.cstr:CSTREnv")
