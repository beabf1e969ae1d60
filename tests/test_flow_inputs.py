"""What deployments give the flows (an inline spec or a spec file, plus overrides), and `gymflow alerts` input errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import base_spec
from gymflow import config
from gymflow.errors import SpecError, UserError


def _file(tmp_path: Path, **overrides: Any) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(base_spec(storage=str(tmp_path / "runs" / "${trial_id}"), **overrides)))
    return str(path)


def test_a_spec_file_and_an_inline_form_resolve_to_the_same_trial(tmp_path: Path) -> None:
    from_file = config.resolve_input(None, _file(tmp_path), ["budget.timesteps=1024"])
    inline = config.resolve_input(base_spec(storage=str(tmp_path / "runs" / "${trial_id}")), None, ["budget.timesteps=1024"])
    assert from_file == inline
    assert from_file.budget.timesteps == 1024 and from_file.storage.endswith(from_file.trial_id or "?")


def test_a_resolved_spec_is_used_as_it_is_and_overrides_give_it_a_new_trial_id(tmp_path: Path) -> None:
    resolved = config.resolve_input(None, _file(tmp_path))
    assert config.resolve_input(resolved, None) is resolved
    changed = config.resolve_input(resolved, None, ["seed=3"])
    assert changed.seed == 3 and changed.trial_id != resolved.trial_id


def test_a_file_uri_is_read_too(tmp_path: Path) -> None:
    assert config.resolve_input(None, f"file://{_file(tmp_path)}").name == "test"


@pytest.mark.parametrize(("spec", "spec_file", "message"), [
    (None, None, "spec: give either `spec` (the spec inline) or `spec_file` (a path or URI of a spec YAML file); neither was given"),
    ({"name": "x"}, "a.yaml", "spec: give either `spec` (the spec inline) or `spec_file` (a path or URI of a spec YAML file); both were given"),
    (None, "missing.yaml", "spec file not found: missing.yaml. Check the path."),
    (None, "s3://bucket/spec.yaml", "storage 's3://bucket': unknown scheme 's3'; use a local path, file://, gs:// or az://"),
])
def test_flow_inputs_that_cannot_run_are_refused_with_the_fix(spec: Any, spec_file: str | None, message: str) -> None:
    with pytest.raises(UserError) as raised:
        config.resolve_input(spec, spec_file)
    assert message in str(raised.value)


def test_a_bad_override_of_a_spec_file_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as raised:
        config.resolve_input(None, _file(tmp_path), ["budget.timesteps=0"])
    assert "budget.timesteps: must be >= 1, got 0" in str(raised.value)


@pytest.mark.usefixtures("prefect_server")
def test_a_deployment_run_with_a_bad_spec_fails_cleanly_before_anything_is_provisioned(tmp_path: Path) -> None:
    from flows.trial import trial

    state = trial(spec_file=_file(tmp_path), overrides=["budget.timesteps=0"], return_state=True)
    assert state.is_failed()
    assert state.message == f"1 problem in {tmp_path / 'spec.yaml'}:\n  - budget.timesteps: must be >= 1, got 0"
    assert not (tmp_path / "runs").exists()


HINT = ("pass --webhook URL (gymflow saves it as a block), or --block TYPE/NAME of a notification block made in the "
        "Prefect UI (e.g. slack-webhook/team-alerts; `prefect block ls` lists them)")


@pytest.mark.parametrize(("args", "message"), [
    ([], f"alerts need exactly one notification target: {HINT}"),
    (["--webhook", "http://a/h", "--block", "slack-webhook/x"], f"alerts need exactly one notification target: {HINT}"),
    (["--webhook", "hooks.example.org"], "--webhook 'hooks.example.org': expected an http(s) URL, e.g. https://hooks.example.org/gymflow"),
    (["--block", "team-alerts"], "--block 'team-alerts': expected TYPE/NAME, e.g. slack-webhook/team-alerts"),
    (["--block", "slack-webhook/x", "--file", "nope.yaml"],
     "--file: automations file not found: nope.yaml. Give the path of deployments/automations.yaml."),
])
def test_alerts_apply_refuses_bad_input_before_contacting_a_server(args: list[str], message: str, cli: Any, tmp_path: Path) -> None:
    result = cli("alerts", "apply", *args)
    assert result.code == 2
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "gymflow-home").exists()  # no background server was started


def test_an_invalid_automation_names_it_and_the_field(cli: Any, tmp_path: Path) -> None:
    bad = tmp_path / "automations.yaml"
    bad.write_text(yaml.safe_dump({"automations": [{"name": "mine", "trigger": {"type": "event", "posture": "Sideways"},
                                                    "actions": []}]}))
    result = cli("alerts", "apply", "--webhook", "http://127.0.0.1:9/h", "--file", str(bad))
    assert result.code == 2
    assert f"--file {bad}: automation 'mine': trigger." in " ".join(result.stderr.split())


def test_the_shipped_automations_are_valid_prefect_automations() -> None:
    from gymflow.cli import alerts

    items = alerts.load(alerts.default_file())
    assert [i["name"] for i in items] == ["gymflow: trial or sweep failed", "gymflow: trial or sweep crashed",
                                         "gymflow: sweep completed"]


def test_an_automations_file_that_is_not_yaml_is_refused(cli: Any, tmp_path: Path) -> None:
    bad = tmp_path / "automations.yaml"
    bad.write_text("automations: [\n")
    result = cli("alerts", "apply", "--webhook", "http://127.0.0.1:9/h", "--file", str(bad))
    assert result.code == 2 and f"--file {bad}: invalid YAML:" in " ".join(result.stderr.split())


@pytest.mark.usefixtures("prefect_server")
def test_a_block_that_does_not_exist_or_cannot_notify_is_refused_with_the_fix(cli: Any) -> None:
    from prefect.blocks.system import Secret

    result = cli("alerts", "apply", "--block", "slack-webhook/nobody")
    assert result.code == 2
    assert f"--block 'slack-webhook/nobody': no such block on this Prefect server; {HINT}" in " ".join(result.stderr.split())
    Secret(value="x").save("not-a-notifier", overwrite=True)
    result = cli("alerts", "apply", "--block", "secret/not-a-notifier")
    assert result.code == 2
    assert (f"--block 'secret/not-a-notifier' is a secret block, which cannot send notifications; {HINT}"
            in " ".join(result.stderr.split()))
