"""The learning-curve PNG: training episode reward and evaluation mean +/- std over timesteps."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TRAIN_KEY = "rollout/ep_rew_mean"


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (its first import takes ~0.6 s here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(train: list[dict[str, Any]], evals: list[dict[str, Any]], title: str, out: Path) -> Path:
    """Draw the curve to out (PNG) and return its path."""
    import numpy as np

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    points = [(r["timesteps"], r[TRAIN_KEY]) for r in train if TRAIN_KEY in r]
    if points:
        x, y = zip(*points)
        ax.plot(x, y, label="training episode reward (mean of last 100)", color="tab:blue", alpha=0.8)
    evals = [r for r in evals if "mean_reward" in r]
    if evals:
        x = np.array([r["timesteps"] for r in evals])
        mean = np.array([r["mean_reward"] for r in evals])
        std = np.array([r.get("std_reward", 0.0) for r in evals])
        ax.plot(x, mean, "o-", label="evaluation reward (mean ± std)", color="tab:orange")
        ax.fill_between(x, mean - std, mean + std, color="tab:orange", alpha=0.2)
    if not points and not evals:
        ax.text(0.5, 0.5, "no metrics recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("timesteps")
    ax.set_ylabel("episode reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
