"""MLflow tracking of a trial: one run with the flat resolved spec, metrics as they come, artifacts.

Uses ``MlflowClient`` with explicit run ids (no global active run), so several trials can
be tracked from one process. The store is the spec's ``tracking.uri``, else
``MLFLOW_TRACKING_URI``, else MLflow's own local default.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gymflow.results import (CURVE_FILE, EVAL_FILE, LOG_FILE, MODEL_FILE, SPEC_FILE, TRACKING_FILE, VECNORM_FILE, EvalReport,
                             TrackingRecord)
from gymflow.spec import Spec
from gymflow.storage import RunStore

logger = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
ARTIFACTS = (MODEL_FILE, VECNORM_FILE, SPEC_FILE, EVAL_FILE, CURVE_FILE, LOG_FILE)
_BATCH = 1000


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; lists and empty mappings become their JSON text."""
    import json

    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    text = value if isinstance(value, str) else json.dumps(value)
    return {prefix: text[:6000]}


def git_commit() -> str | None:
    """The commit of the working directory's repository, if there is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def read_record(store: RunStore) -> TrackingRecord | None:
    """The run dir's tracking.json: its MLflow run and what was forwarded there; None when there is none."""
    try:
        return TrackingRecord.model_validate(store.read_json(TRACKING_FILE))
    except FileNotFoundError:
        return None
    except ValueError:
        logger.warning("%s/%s is damaged; the trial gets a new MLflow run", store.uri, TRACKING_FILE)
        return None


def write_record(store: RunStore, record: TrackingRecord) -> None:
    store.write_json(TRACKING_FILE, record.model_dump(mode="json"))


def fail_if_running(store: RunStore) -> str | None:
    """Mark the run dir's MLflow run FAILED when it is still RUNNING (its orchestrator died); its id when it was."""
    record = read_record(store)
    if record is None:
        return None
    tracker = Tracker(record.tracking_uri)
    if tracker.client.get_run(record.mlflow_run_id).info.status != "RUNNING":
        return None
    tracker.finish(record.mlflow_run_id, "FAILED")
    return record.mlflow_run_id


def absolute_uri(uri: str) -> str:
    """sqlite:///mlflow.db -> sqlite:////abs/mlflow.db; a relative folder -> its absolute path."""
    from pathlib import Path

    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


class Tracker:
    """MLflow access for trials of one tracking store."""

    def __init__(self, uri: str | None = None) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = uri or mlflow.get_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)

    @staticmethod
    def default_uri() -> str:
        """MLFLOW_TRACKING_URI, or MLflow's own local default."""
        import mlflow

        return mlflow.get_tracking_uri()

    def artifact_root(self, experiment: str) -> str | None:
        """Where a new experiment keeps its artifacts: beside a SQLite store's database file.

        MLflow's own default is ./mlruns of whatever folder the creating process runs in, so a
        store given as sqlite:////data/mlflow.db would scatter its artifacts over working folders.
        Here they go to /data/mlruns/<experiment name>; other stores keep their server's default.
        """
        if not self.uri.startswith("sqlite:///"):
            return None
        database = Path(self.uri.removeprefix("sqlite:///").split("?", 1)[0])
        folder = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment).strip(".") or "experiment"
        return (database.resolve().parent / "mlruns" / folder).as_uri()

    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self.artifact_root(name))
        except Exception:  # noqa: BLE001 - created concurrently by another trial
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start(self, spec: Spec, run_name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
        """Create the trial's run with the flat spec as params; returns its run id."""
        from mlflow.entities import Param

        all_tags = {"gymflow.trial_id": spec.trial_id or "", "gymflow.backend": spec.backend.kind, **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id(spec.experiment), run_name=run_name, tags=all_tags)
        params = [Param(k, v) for k, v in flatten(spec.model_dump(mode="json")).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i:i + 100])
        return run.info.run_id

    def reopen(self, run_id: str, tags: dict[str, str], parent_run_id: str | None = None) -> bool:
        """Continue an earlier run of the same trial (status RUNNING again, tags updated, an attempt counted);
        False when it no longer exists (deleted, or another store)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        if run.info.lifecycle_stage != "active":
            return False
        attempts = int(run.data.tags.get("gymflow.attempts", "1")) + 1
        self.client.update_run(run_id, status="RUNNING")
        all_tags = {**tags, "gymflow.attempts": str(attempts)}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        self.set_tags(run_id, all_tags)
        return True

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_records(self, run_id: str, records: Iterable[dict[str, Any]], prefix: str = "") -> int:
        """Log metric records {"timesteps", "time", name: value} in batches; returns the metric count."""
        from mlflow.entities import Metric

        metrics = []
        for record in records:
            step, stamp = int(record.get("timesteps", 0)), int(float(record.get("time", time.time())) * 1000)
            metrics += [Metric(f"{prefix}{k}", float(v), stamp, step) for k, v in record.items() if k not in ("timesteps", "time")]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + _BATCH])
        return len(metrics)

    def log_eval(self, run_id: str, report: EvalReport) -> None:
        self.set_tags(run_id, {"gymflow.evaluated_model": report.which()})
        record = {"timesteps": report.timesteps, "mean_reward": report.mean_reward, "std_reward": report.std_reward,
                  "mean_length": report.mean_length, "std_length": report.std_length, "n_episodes": report.n_episodes}
        self.log_records(run_id, [record], prefix="eval/final_")

    def log_artifacts(self, run_id: str, store: RunStore) -> list[str]:
        """Upload the run dir's artifacts that exist; returns their names."""
        logged = []
        for rel in ARTIFACTS:
            if store.exists(rel):
                path: Path = store.fetch(rel)
                self.client.log_artifact(run_id, str(path))
                logged.append(rel)
        return logged

    def finish(self, run_id: str, status: str) -> None:
        """status: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)

    def run_url(self, run_id: str, experiment: str) -> str:
        """Where to look at the run: the UI link for an HTTP store, else the store and ids."""
        if self.uri.startswith(("http://", "https://")):
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else "0"
            return f"{self.uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"
        return f"run {run_id} in {self.uri} (browse with: mlflow ui --backend-store-uri {self.uri})"
