"""The markdown summary of a trial, shown as a Prefect artifact."""

from __future__ import annotations

from gymflow.spec import Spec
from gymflow.results import TrialOutcome


def trial_markdown(spec: Spec, result: TrialOutcome, artifacts: list[str] | None = None) -> str:
    """Outcome, mean reward ± std, timesteps, duration, MLflow run, run dir."""
    reward = f"{result.mean_reward:.2f} ± {result.std_reward:.2f}" if result.mean_reward is not None else "–"
    lines = [
        f"# Trial `{result.trial_id}`: {result.outcome}",
        "",
        f"{spec.algorithm.name.upper()} on `{spec.env.id}`, seed {spec.seed}, experiment `{result.experiment}`",
        "",
        "| | |",
        "| --- | --- |",
        f"| outcome | **{result.outcome}** |",
        f"| mean evaluation reward | {reward} |",
        f"| timesteps | {result.timesteps} |",
        f"| duration | {result.duration_s:.1f} s |",
        f"| MLflow run | `{result.mlflow_run_id or '–'}` |",
        f"| run dir | `{result.run_uri}` |",
    ]
    if result.error:
        lines.append(f"| error | {result.error} |")
    if artifacts:
        lines.append(f"| artifacts | {', '.join(artifacts)} |")
    return "\n".join(lines) + "\n"
