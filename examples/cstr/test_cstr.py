"""The CSTR's own tests: its physics (steady states, a known trajectory, runaway) and its gymnasium API."""

from __future__ import annotations

import numpy as np
import pytest

from examples.cstr import CSTREnv, STEADY_300K, derivatives, simulate


def test_the_textbook_steady_state_at_300_k_is_one() -> None:
    dca, dt = derivatives(*STEADY_300K, 300.0)
    assert abs(dca) < 1e-3 and abs(dt) < 1e-2  # the rounded published values: Ca 0.8773 mol/L, T 324.48 K
    assert simulate(*STEADY_300K, 300.0, 30.0, 3000) == pytest.approx(STEADY_300K, abs=1e-2)


def test_warmer_coolant_moves_along_the_low_temperature_branch() -> None:
    # a step of the coolant from 300 to 302 K: the reactor warms, the reaction speeds up, Ca falls to a new steady state
    ca, t = STEADY_300K
    trajectory = []
    for _ in range(300):  # 30 minutes in 0.1 min steps
        ca, t = simulate(ca, t, 302.0, 0.1)
        trajectory.append((ca, t))
    assert trajectory[-1] == pytest.approx((0.8348, 328.702), rel=1e-4)
    assert trajectory[9] == pytest.approx((0.8652, 327.253), rel=1e-4)  # after one minute: most of the way there


def test_coolant_past_304_k_runs_away_to_the_high_temperature_branch() -> None:
    ca, t, peak = *STEADY_300K, 0.0
    for _ in range(300):
        ca, t = simulate(ca, t, 305.0, 0.1)
        peak = max(peak, t)
    assert peak > 440 and ca < 0.2  # the reaction ran away: hot, and nearly all of A consumed


def test_the_env_passes_gymnasiums_checker() -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(CSTREnv(), skip_render_check=True)


def test_holding_the_target_earns_full_reward_and_a_runaway_ends_the_episode() -> None:
    env = CSTREnv()
    env.reset(seed=0, options={"cref": STEADY_300K[0]})
    _, reward, terminated, truncated, info = env.step(np.array([0.0], dtype=np.float32))  # Tc 300 K: it stays put
    assert reward == pytest.approx(1.0, abs=1e-2) and not terminated and not truncated and info["tc"] == 300.0
    env.reset(seed=0, options={"cref": 0.5})
    for step in range(1, 101):
        _, _, terminated, truncated, info = env.step(np.array([1.0], dtype=np.float32))  # coolant 310 K
        if terminated:
            break
    assert terminated and info["runaway"] and info["t"] > 400 and step < 100


def test_an_episode_is_truncated_after_its_simulated_time() -> None:
    env = CSTREnv(dt_min=0.5, minutes=5.0)
    env.reset(seed=0)
    ends = [env.step(np.array([0.0], dtype=np.float32))[3] for _ in range(10)]
    assert ends == [False] * 9 + [True]


def test_reset_options_set_the_lesson_and_unknown_ones_are_refused() -> None:
    env = CSTREnv()
    obs, info = env.reset(seed=1, options={"cref": 0.9, "noise": 5.0, "ca0": 0.85, "t0": 326.0})
    assert info == {"cref": 0.9, "noise": 5.0} and env.ca == 0.85 and env.t == 326.0
    assert obs[2] == pytest.approx((0.9 - 0.5) / 0.5)
    noisy = [env.reset(seed=s, options={"noise": 5.0})[0][0] for s in range(5)]
    assert len(set(noisy)) == 5  # measurements differ with noise
    with pytest.raises(ValueError, match=r"unknown option\(s\) target; it takes cref, noise, ca0, t0"):
        env.reset(options={"target": 0.5})
    with pytest.raises(ValueError, match="cref 1.5 must be between 0 and 1.0 mol/L"):
        env.reset(options={"cref": 1.5})
