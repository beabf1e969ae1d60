"""Compare the trials of a sweep: one row per trial, configurations over seeds, learning curves."""

from __future__ import annotations

import io
import json
import logging
import math
from collections import defaultdict
from typing import Any

import numpy as np
from pydantic import BaseModel

from gymflow.results import EVAL_METRICS, TrialOutcome
from gymflow.storage import open_run

logger = logging.getLogger(__name__)


class ConfigSummary(BaseModel):
    """One configuration: mean and spread of the final mean reward over its seeds."""

    config: str
    mean_reward: float
    std_over_seeds: float
    seeds: int
    failed: int


def summarise(rows: list[TrialOutcome]) -> list[ConfigSummary]:
    """Configurations, best first."""
    groups: dict[str, list[TrialOutcome]] = defaultdict(list)
    for row in rows:
        groups[row.config_key].append(row)
    out = []
    for key, members in groups.items():
        rewards = [m.mean_reward for m in members if m.outcome == "completed" and m.mean_reward is not None]
        if not rewards:
            continue
        out.append(ConfigSummary(config=key, mean_reward=float(np.mean(rewards)), std_over_seeds=float(np.std(rewards)),
                                 seeds=len(rewards), failed=sum(m.outcome != "completed" for m in members)))
    return sorted(out, key=lambda c: -c.mean_reward)


def table(rows: list[TrialOutcome]) -> list[dict[str, Any]]:
    """Rows for a Prefect table artifact."""
    out = []
    for row in rows:
        reward = f"{row.mean_reward:.2f} ± {row.std_reward:.2f}" if row.mean_reward is not None else "–"
        out.append({"trial": row.trial_id, **{k: json.dumps(v) if not isinstance(v, (int, float, str)) else v for k, v in row.config.items()},
                    "seed": row.seed, "mean reward": reward, "timesteps": row.timesteps,
                    "duration (s)": round(row.duration_s, 1), "status": row.outcome + (f": {row.error}" if row.error else "")})
    return out


def _eval_curve(run_uri: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        lines = open_run(run_uri).read_text(EVAL_METRICS).splitlines()
    except (FileNotFoundError, OSError):
        return None
    records = [json.loads(line) for line in lines if line.strip()]
    points = sorted((r["timesteps"], r["mean_reward"]) for r in records if "mean_reward" in r)
    if not points:
        return None
    x, y = zip(*points)
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


def plot_curves(rows: list[TrialOutcome], title: str) -> bytes:
    """Evaluation reward over timesteps as a PNG: one line per configuration, mean ± std over its seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for row in rows:
        curve = _eval_curve(row.run_uri) if row.run_uri else None
        if curve is not None:
            groups[row.config_key].append(curve)
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    for key, curves in sorted(groups.items()):
        grid = np.unique(np.concatenate([x for x, _ in curves]))
        ys = np.array([np.interp(grid, x, y, left=math.nan, right=math.nan) for x, y in curves])
        mean, std = np.nanmean(ys, axis=0), np.nanstd(ys, axis=0)
        line, = ax.plot(grid, mean, marker="o", ms=3, label=f"{key} ({len(curves)} seed{'s' if len(curves) != 1 else ''})")
        ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    if not groups:
        ax.text(0.5, 0.5, "no evaluation metrics recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("timesteps")
    ax.set_ylabel("evaluation reward (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return png.getvalue()
