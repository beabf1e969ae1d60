"""A Compute Engine stand-in at the wire, for the real google-cloud-compute client (and google-auth's metadata-server
credentials: GCE_METADATA_HOST).

It answers the REST calls gymflow's gcp backend makes — instances insert / get / delete / aggregatedList /
serialPort, zoneOperations get / wait — with Compute Engine's JSON, and it *boots* each VM it creates: the
instance's startup script runs as a local process group (its output is the serial console), so the real worker
runs against the real bucket emulator. A deleted or preempted VM's processes are killed; `maxRunDuration` with
`instanceTerminationAction: DELETE` deletes it when the time is up. Tests can make a zone run out of capacity, make
the next answers 429/503, and preempt a VM.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

BASE = "https://www.googleapis.com/compute/v1"
MACHINE_TYPES = {"g2-standard-4", "g2-standard-8", "n1-standard-4", "n1-standard-8", "e2-standard-2", "e2-standard-4"}
IMAGE_FAMILIES = {"projects/deeplearning-platform-release/global/images/family/pytorch-latest-gpu",
                  "projects/debian-cloud/global/images/family/debian-12"}
PROJECT = "gymflow-test"
SERVICE_ACCOUNT = "orchestrator@gymflow-test.iam.gserviceaccount.com"


@dataclass
class Vm:
    project: str
    zone: str
    body: dict[str, Any]
    serial: Path
    status: str = "PROVISIONING"
    proc: subprocess.Popen[bytes] | None = None
    created: float = field(default_factory=time.time)
    id: int = 0

    def json(self) -> dict[str, Any]:
        return {**self.body, "kind": "compute#instance", "id": str(self.id), "status": self.status,
                "zone": f"{BASE}/projects/{self.project}/zones/{self.zone}",
                "selfLink": f"{BASE}/projects/{self.project}/zones/{self.zone}/instances/{self.body['name']}",
                "creationTimestamp": datetime.fromtimestamp(self.created, timezone.utc).isoformat()}


class FakeCompute:
    """The server; `url` for api_endpoint, `metadata_host` for GCE_METADATA_HOST."""

    def __init__(self, folder: Path, vm_env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.vm_env = dict(vm_env or os.environ)
        self.vms: dict[tuple[str, str, str], Vm] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.no_room: dict[str, str] = {}  # zone -> the operation error code a create there ends with
        self.fail_next: list[int] = []  # status codes for the next API answers (429, 503)
        self.deny_create = False  # the caller lacks compute.instances.create
        self.stuck: set[str] = set()  # VMs whose deletion is accepted and never carried out
        self.requests: list[tuple[str, str, dict[str, Any] | None]] = []
        self.peak = 0  # the most VMs that existed at once
        self.time_scale = 1.0  # seconds of the fake's clock per second of the VMs' maxRunDuration
        self.lock = threading.RLock()
        self._ids = itertools.count(1000)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-compute", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def metadata_host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeCompute:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self.lock:
            for vm in list(self.vms.values()):
                self._kill(vm)
        self.server.shutdown()
        self.server.server_close()

    # -- what tests look at and do ---------------------------------------------------------------
    def calls(self, method: str, pattern: str) -> list[dict[str, Any] | None]:
        """Bodies of the requests whose method is method and whose path matches pattern."""
        return [body for m, path, body in self.requests if m == method and re.search(pattern, path)]

    def running(self) -> list[Vm]:
        with self.lock:
            return [vm for vm in self.vms.values() if vm.status in ("PROVISIONING", "STAGING", "RUNNING")]

    def preempt(self, name: str) -> None:
        """What a spot VM with instanceTerminationAction DELETE goes through: its processes end and it is deleted."""
        with self.lock:
            vm = next(v for v in self.vms.values() if v.body["name"] == name)
            self._kill(vm)
            self.vms.pop((vm.project, vm.zone, name), None)

    # -- the VM's life -----------------------------------------------------------------------------
    def _boot(self, vm: Vm) -> None:
        items = {i["key"]: i.get("value", "") for i in (vm.body.get("metadata") or {}).get("items", [])}
        script = items.get("startup-script", "")
        vm.status = "RUNNING"
        with vm.serial.open("ab") as console:
            console.write(f"fake-compute: booting {vm.body['name']} in {vm.zone}\n".encode())
            console.flush()
            vm.proc = subprocess.Popen(["bash", "-c", script], env=self.vm_env, stdout=console, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.folder)
        limit = (vm.body.get("scheduling") or {}).get("maxRunDuration", {}).get("seconds")
        if limit:
            timer = threading.Timer(float(limit) * self.time_scale, self._time_up, args=(vm,))
            timer.daemon = True
            timer.start()

    def _time_up(self, vm: Vm) -> None:
        with self.lock:
            if self.vms.get((vm.project, vm.zone, vm.body["name"])) is vm:
                self._kill(vm)
                if (vm.body.get("scheduling") or {}).get("instanceTerminationAction") == "DELETE":
                    self.vms.pop((vm.project, vm.zone, vm.body["name"]))

    @staticmethod
    def _kill(vm: Vm) -> None:
        """Everything the VM runs dies with it: the startup script's process group and whatever left it (the
        agent starts each worker in a session of its own)."""
        import psutil

        vm.status = "TERMINATED"
        if vm.proc is not None and vm.proc.poll() is None:
            try:
                tree = psutil.Process(vm.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            try:
                os.killpg(vm.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for child in tree:
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
            vm.proc.wait()

    # -- the API -----------------------------------------------------------------------------------
    def _operation(self, project: str, zone: str, kind: str, target: str, error: str | None = None) -> dict[str, Any]:
        name = f"operation-{next(self._ids)}-{kind}"
        op: dict[str, Any] = {"kind": "compute#operation", "id": str(next(self._ids)), "name": name,
                              "zone": f"{BASE}/projects/{project}/zones/{zone}", "operationType": kind,
                              "targetLink": f"{BASE}/projects/{project}/zones/{zone}/instances/{target}",
                              "status": "DONE", "progress": 100,
                              "selfLink": f"{BASE}/projects/{project}/zones/{zone}/operations/{name}"}
        if error:
            op["error"] = {"errors": [{"code": error, "message": f"The zone '{zone}' does not have enough resources "
                                       "available to fulfill the request." if "EXHAUSTED" in error else
                                       f"Quota exceeded in {zone}."}]}
        self.operations[name] = op
        return op

    def _insert(self, project: str, zone: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = body.get("name", "")
        if self.deny_create:
            return 403, _error(403, f"Required 'compute.instances.create' permission for "
                                    f"'projects/{project}/zones/{zone}/instances/{name}'", "forbidden")
        machine = str(body.get("machineType", "")).rsplit("/", 1)[-1]
        if machine not in MACHINE_TYPES:
            return 400, _error(400, f"Invalid value for field 'resource.machineType': '{body.get('machineType')}'. "
                                    f"Machine type with name '{machine}' does not exist in zone '{zone}'.", "invalid")
        for disk in body.get("disks", []):
            image = (disk.get("initializeParams") or {}).get("sourceImage", "")
            if image and image not in IMAGE_FAMILIES:
                return 404, _error(404, f"The resource '{image}' was not found", "notFound")
        if (project, zone, name) in self.vms:
            return 409, _error(409, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists",
                               "alreadyExists")
        if zone in self.no_room:
            return 200, self._operation(project, zone, "insert", name, self.no_room[zone])
        vm = Vm(project, zone, body, self.folder / f"serial-{name}.log", id=next(self._ids))
        self.vms[(project, zone, name)] = vm
        self.peak = max(self.peak, len(self.vms))
        self._boot(vm)
        return 200, self._operation(project, zone, "insert", name)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any] | None) -> tuple[int, Any]:
        if path.startswith("/computeMetadata/v1") or path == "/":
            return 200, _metadata(path, query)
        m = re.match(r"^/compute/v1/projects/([^/]+)/(.*)$", path)
        if not m:
            return 404, _error(404, f"no route {path}", "notFound")
        project, rest = m[1], m[2]
        with self.lock:
            if m2 := re.match(r"^zones/([^/]+)/instances$", rest):
                zone = m2[1]
                if method == "POST":
                    return self._insert(project, zone, body or {})
                items = [vm.json() for (p, z, _), vm in self.vms.items() if p == project and z == zone
                         and _matches(vm, query.get("filter", [""])[0])]
                return 200, {"kind": "compute#instanceList", "items": items}
            if m2 := re.match(r"^zones/([^/]+)/instances/([^/]+)(/serialPort)?$", rest):
                zone, name, serial = m2[1], m2[2], m2[3]
                vm = self.vms.get((project, zone, name))
                if vm is None:
                    return 404, _error(404, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not "
                                            "found", "notFound")
                if serial:
                    text = vm.serial.read_text(errors="replace") if vm.serial.exists() else ""
                    return 200, {"kind": "compute#serialPortOutput", "contents": text, "start": "0", "next": str(len(text))}
                if method == "DELETE":
                    if name in self.stuck:
                        return 200, self._operation(project, zone, "delete", name)
                    self._kill(vm)
                    del self.vms[(project, zone, name)]
                    return 200, self._operation(project, zone, "delete", name)
                return 200, vm.json()
            if m2 := re.match(r"^zones/([^/]+)/operations/([^/]+?)(/wait)?$", rest):
                op = self.operations.get(m2[2])
                return (200, op) if op else (404, _error(404, f"operation {m2[2]} not found", "notFound"))
            if rest == "aggregated/instances":
                scopes: dict[str, Any] = {}
                for (p, z, _), vm in self.vms.items():
                    if p == project and _matches(vm, query.get("filter", [""])[0]):
                        scopes.setdefault(f"zones/{z}", {"instances": []})["instances"].append(vm.json())
                return 200, {"kind": "compute#instanceAggregatedList", "items": scopes}
        return 404, _error(404, f"no route {path}", "notFound")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw.strip() else None
                metadata = url.path.startswith("/computeMetadata") or url.path == "/"
                if not metadata:
                    fake.requests.append((self.command, url.path, body))
                    with fake.lock:
                        failing = fake.fail_next.pop(0) if fake.fail_next else None
                    if failing:
                        return self._answer(failing, _error(failing, "Rate Limit Exceeded" if failing == 429 else
                                                            "The service is currently unavailable.", "backendError"))
                code, answer = fake._route(self.command, url.path, parse_qs(url.query), body)
                self._answer(code, answer, metadata)

            def _answer(self, code: int, answer: Any, metadata: bool = False) -> None:
                data = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/text" if isinstance(answer, str) else "application/json")
                if metadata:
                    self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _serve

        return Handler


def _error(code: int, message: str, reason: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "errors": [{"message": message, "domain": "global", "reason": reason}]}}


def _matches(vm: Vm, query: str) -> bool:
    """Compute Engine's filter, as far as gymflow uses it: `labels.K=V` terms joined by AND."""
    labels = vm.body.get("labels") or {}
    for term in filter(None, (t.strip() for t in re.split(r"\bAND\b", query))):
        m = re.match(r"^labels\.([\w-]+)\s*=\s*\"?([\w-]*)\"?$", term)
        if not m or labels.get(m[1]) != m[2]:
            return False
    return True


def _metadata(path: str, query: dict[str, list[str]]) -> Any:
    """The metadata server's answers that google-auth asks for on a VM: project id, account, token."""
    if path.endswith("/project/project-id"):
        return PROJECT
    if "/service-accounts/default/token" in path:
        return {"access_token": "fake-compute-token", "expires_in": 3600, "token_type": "Bearer"}
    if "/service-accounts/default" in path:
        return {"email": SERVICE_ACCOUNT, "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                "aliases": ["default"]}
    return ""
