"""Alerts: the Prefect automations kept in deployments/automations.yaml, applied to a Prefect server.

Applying is idempotent: an automation is matched by name and updated, or created. Every
notification action is pointed at one notification block the user picks (a webhook gymflow
saves, or any block made in the Prefect UI: Slack, email, Teams, ...).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml

from gymflow.errors import UserError

logger = logging.getLogger(__name__)

WEBHOOK_BLOCK = "gymflow-alerts"
BLOCK_HINT = ("pass --webhook URL (gymflow saves it as a block), or --block TYPE/NAME of a notification block "
              "made in the Prefect UI (e.g. slack-webhook/team-alerts; `prefect block ls` lists them)")


def default_file() -> Path:
    """deployments/automations.yaml of this checkout."""
    return Path(__file__).resolve().parents[2] / "deployments" / "automations.yaml"


def heartbeat_file() -> Path:
    """deployments/automations-postgresql.yaml: the heartbeat watch, for servers on PostgreSQL."""
    return default_file().with_name("automations-postgresql.yaml")


@dataclass(frozen=True)
class Applied:
    name: str
    id: UUID
    created: bool


def load(path: Path) -> list[dict[str, Any]]:
    """The automations of a file, as Prefect's automation format (a list, or {automations: [...]})."""
    if not path.is_file():
        raise UserError(f"--file: automations file not found: {path}. Give the path of deployments/automations.yaml.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"--file {path}: invalid YAML: {exc}") from None
    items = data.get("automations") if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(item, dict) and item.get("name") for item in items):
        raise UserError(f"--file {path}: expected `automations:` with a list of automations, each with a name")
    for item in items:
        _validate(path, item, UUID(int=0))
    return items


def _validate(path: Path, item: dict[str, Any], block_id: UUID) -> Any:
    """Prefect's automation model of one item, its notifications pointed at the block."""
    from prefect.events.schemas.automations import AutomationCore
    from pydantic import ValidationError

    actions = [{**a, "block_document_id": str(block_id)} if isinstance(a, dict) and a.get("type") == "send-notification"
               else a for a in item.get("actions", [])]
    try:
        return AutomationCore.model_validate({**item, "actions": actions})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"--file {path}: automation {item['name']!r}: {where}: {first['msg']}") from None


def check_target(block: str | None, webhook: str | None) -> None:
    """Refuse a missing, doubled or malformed notification target before any server is contacted."""
    from urllib.parse import urlparse

    if (block is None) == (webhook is None):
        raise UserError(f"alerts need exactly one notification target: {BLOCK_HINT}")
    if webhook is not None and (urlparse(webhook).scheme not in ("http", "https") or not urlparse(webhook).netloc):
        raise UserError(f"--webhook {webhook!r}: expected an http(s) URL, e.g. https://hooks.example.org/gymflow")
    if block is not None and not all(block.partition("/")[::2]):
        raise UserError(f"--block {block!r}: expected TYPE/NAME, e.g. slack-webhook/team-alerts")


def _block_id(client: Any, block: str | None, webhook: str | None) -> UUID:
    check_target(block, webhook)
    if webhook is not None:
        return _save_webhook(webhook)
    from prefect.exceptions import ObjectNotFound

    slug, _, name = (block or "").partition("/")
    try:
        document = client.read_block_document_by_name(name=name, block_type_slug=slug)
    except ObjectNotFound:
        raise UserError(f"--block {block!r}: no such block on this Prefect server; {BLOCK_HINT}") from None
    capabilities = document.block_schema.capabilities if document.block_schema else []
    if "notify" not in capabilities:
        raise UserError(f"--block {block!r} is a {slug} block, which cannot send notifications; {BLOCK_HINT}")
    return document.id


def _save_webhook(url: str) -> UUID:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    hook = CustomWebhookNotificationBlock(name=WEBHOOK_BLOCK, url=url, method="POST",
                                          json_data={"subject": "{{subject}}", "body": "{{body}}"})
    return hook.save(WEBHOOK_BLOCK, overwrite=True)


def apply(files: list[tuple[Path, list[dict[str, Any]]]], block: str | None = None,
          webhook: str | None = None) -> list[Applied]:
    """Create or update the automations loaded from each file, notifying through the chosen block."""
    from prefect.client.orchestration import get_client

    applied = []
    with get_client(sync_client=True) as client:
        block_id = _block_id(client, block, webhook)
        for path, item in ((path, item) for path, items in files for item in items):
            automation = _validate(path, item, block_id)
            existing = client.read_automations_by_name(automation.name)
            if existing:
                client.update_automation(existing[0].id, automation)
                applied.append(Applied(automation.name, existing[0].id, created=False))
            else:
                applied.append(Applied(automation.name, client.create_automation(automation), created=True))
            logger.info("automation %r %s", automation.name, "created" if applied[-1].created else "updated")
    return applied


def remove(items: list[dict[str, Any]]) -> list[str]:
    """Delete the loaded automations from the server; the names deleted."""
    from prefect.client.orchestration import get_client

    removed = []
    with get_client(sync_client=True) as client:
        for item in items:
            for found in client.read_automations_by_name(item["name"]):
                client.delete_automation(found.id)
                removed.append(found.name)
    return removed
