"""Build gymnasium envs and SB3 vectorised envs from an EnvSpec."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from gymflow.spec import ENTRY_POINT_RE, Choice, EnvSpec, NormalizeSpec, UniformRange

_REGISTERED_PREFIX = "gymflow"
PLUGIN_GROUPS = ("gymnasium.envs", "gymflow.envs")  # entry points that register a package's envs with gymnasium
_plugins_loaded = False


def load_env_plugins() -> None:
    """Let installed packages register their gymnasium ids: each entry point of PLUGIN_GROUPS is loaded (a module
    that registers on import, or a function, which is called). Once per process; a plugin that fails is logged and
    skipped (its ids then stay unknown, and validation says so)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import logging
    from importlib.metadata import entry_points

    for group in PLUGIN_GROUPS:
        for point in entry_points(group=group):
            try:
                loaded = point.load()
                if callable(loaded):
                    loaded()
            except Exception:  # noqa: BLE001 - one broken plugin must not hide the others
                logging.getLogger(__name__).warning("env plugin %s (%s) failed to load", point.name, point.value,
                                                    exc_info=True)


def registered(env_id: str) -> bool:
    """Whether gymnasium knows env_id, after installed packages had their say (load_env_plugins)."""
    if env_id not in gym.envs.registry:
        load_env_plugins()
    return env_id in gym.envs.registry


class ScenarioWrapper(gym.Wrapper):
    """Draws each named reset option anew at every reset, from its own seeded generator.

    Options passed to ``reset`` explicitly win over drawn ones; the drawn values are
    reported in ``info["scenario"]``.
    """

    def __init__(self, env: gym.Env, params: dict[str, UniformRange | Choice], seed: int, index: int = 0) -> None:
        super().__init__(env)
        self._params = params
        # the trial's seed and the env's index both seed the draws: a vectorised env's i-th env is reset with seed
        # + i, which the next seed's trial uses too, and its lessons must not be the same
        self._stream = (seed - index, index)
        self._rng = np.random.default_rng([*self._stream, seed])

    def draw(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, param in self._params.items():
            if isinstance(param, Choice):
                values[name] = param.values[int(self._rng.integers(len(param.values)))]
            else:
                values[name] = float(self._rng.uniform(param.min, param.max))
        return values

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self._rng = np.random.default_rng([*self._stream, seed])
        drawn = self.draw()
        obs, info = self.env.reset(seed=seed, options={**drawn, **(options or {})})
        return obs, {**info, "scenario": drawn}


def _entry_point_id(env_id: str) -> str:
    """Register a 'package.module:Class' env with gymnasium once; return its registered id."""
    module_name, _, attr = env_id.partition(":")
    module = importlib.import_module(module_name)
    if not hasattr(module, attr.split(".")[0]):
        return env_id  # 'module:EnvId' where importing the module registers EnvId
    registered = f"{_REGISTERED_PREFIX}/{re.sub(r'[^A-Za-z0-9]+', '_', env_id)}-v0"
    if registered not in gym.envs.registry:
        gym.register(id=registered, entry_point=env_id)
    return registered


def make_single_env(spec: EnvSpec, seed: int, monitor: bool = False, index: int = 0) -> gym.Env:
    """One env (the index-th of a vectorised env seeded with seed - index): made, scenario-randomised, monitored when
    asked, wrapped as the spec says."""
    from gymflow.imports import import_object

    env_id = _entry_point_id(spec.id) if ENTRY_POINT_RE.match(spec.id) else spec.id
    registered(env_id)  # an id a package registers through an entry point
    make_kwargs: dict[str, Any] = dict(spec.kwargs)
    if spec.max_episode_steps is not None:
        make_kwargs["max_episode_steps"] = spec.max_episode_steps
    env = gym.make(env_id, **make_kwargs)
    if spec.scenario:
        env = ScenarioWrapper(env, dict(spec.scenario), seed, index)
    if monitor:
        from stable_baselines3.common.monitor import Monitor

        env = Monitor(env)
    for wrapper in spec.wrappers:
        env = import_object(wrapper.path)(env, **wrapper.kwargs)
    env.action_space.seed(seed)
    return env


def _env_fn(spec: EnvSpec, seed: int, index: int) -> Callable[[], gym.Env]:
    def make() -> gym.Env:
        return make_single_env(spec, seed, monitor=True, index=index)

    return make


def build_vec_env(spec: EnvSpec, seed: int, n_envs: int, training: bool, gamma: float, stats_path: str | None = None) -> Any:
    """A VecEnv with frame stacking and VecNormalize as the spec says.

    With ``stats_path`` the VecNormalize statistics are loaded from it. Evaluation envs
    (``training=False``) never update statistics and report unnormalised rewards.
    """
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecFrameStack

    fns = [_env_fn(spec, seed + i, i) for i in range(n_envs)]
    use_subproc = spec.vectorization == "subprocess" and training and n_envs > 1
    venv: Any = SubprocVecEnv(fns) if use_subproc else DummyVecEnv(fns)
    venv.seed(seed)
    if spec.frame_stack:
        venv = VecFrameStack(venv, n_stack=spec.frame_stack)
    venv = _maybe_transpose(venv)
    if spec.normalize is not None:
        venv = _normalize(venv, spec.normalize, training, gamma, stats_path)
    return venv


def _maybe_transpose(venv: Any) -> Any:
    from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
    from stable_baselines3.common.vec_env import VecTransposeImage

    space = venv.observation_space
    if is_image_space(space) and not is_image_space_channels_first(space):
        return VecTransposeImage(venv)
    return venv


def _normalize(venv: Any, options: NormalizeSpec, training: bool, gamma: float, stats_path: str | None) -> Any:
    from stable_baselines3.common.vec_env import VecNormalize

    if stats_path is not None:
        venv = VecNormalize.load(stats_path, venv)
    else:
        venv = VecNormalize(
            venv,
            norm_obs=options.norm_obs,
            norm_reward=options.norm_reward,
            clip_obs=options.clip_obs,
            clip_reward=options.clip_reward,
            gamma=options.gamma if options.gamma is not None else gamma,
            epsilon=options.epsilon,
        )
    venv.training = training
    venv.norm_reward = options.norm_reward and training
    return venv
