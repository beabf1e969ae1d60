"""Take docs/prefect-trial-run.png: a trial deployment's flow run page in the Prefect UI.

Starts its own Prefect server, work pool and worker on 127.0.0.1 (tests/prefect_stack.py),
deploys deployments/prefect.yaml, runs trial/cartpole with a small budget, and photographs
the run page with headless Chromium (Debian: `apt-get install chromium`).

    python docs/screenshot.py [--out docs/prefect-trial-run.png]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from prefect_stack import prefect_stack  # noqa: E402

logger = logging.getLogger(__name__)

OVERRIDES = ["budget.timesteps=4096", "evaluation.every_timesteps=2048", "checkpoint.every_timesteps=2048"]


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium found: apt-get install chromium")


def screenshot(url: str, out: Path, width: int = 1600, height: int = 1000) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--disable-background-networking", "--no-first-run", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}", "--virtual-time-budget=20000",
                        f"--screenshot={out}", url], check=True, capture_output=True, timeout=180)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "prefect-trial-run.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp, prefect_stack(Path(tmp)) as stack:
        deployed = stack.prefect("deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
        if deployed.returncode != 0:
            raise SystemExit(deployed.stdout + deployed.stderr)
        stack.start_worker()
        overrides = [*OVERRIDES, f"storage={tmp}/runs/${{trial_id}}", f"tracking.uri=sqlite:///{tmp}/mlflow.db"]
        run = stack.prefect("deployment", "run", "trial/cartpole", "--param", f"overrides={json.dumps(overrides)}",
                            "--watch", "--watch-timeout", "500", timeout=560)
        if "Completed" not in run.stdout:
            raise SystemExit(run.stdout + run.stderr)
        deployment = httpx.get(f"{stack.api_url}/deployments/name/trial/cartpole").json()
        runs = httpx.post(f"{stack.api_url}/flow_runs/filter", json={
            "deployments": {"id": {"any_": [deployment["id"]]}}, "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
            "limit": 1, "sort": "START_TIME_DESC"}).json()
        page = f"{stack.url}/runs/flow-run/{runs[0]['id']}"
        logger.info("photographing %s", page)
        screenshot(page, args.out)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
