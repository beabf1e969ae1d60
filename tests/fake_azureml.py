"""An Azure ML stand-in at the wire, for the real azure-ai-ml `MLClient` (and azure-identity's managed-identity
credential: IDENTITY_ENDPOINT / IDENTITY_HEADER).

It answers, over HTTPS with a throw-away certificate (azure-core sends bearer tokens over TLS only), the Azure
Resource Manager calls gymflow's azure backend makes through `MLClient` — workspace GET; compute GET / PUT (with an
async operation); environment versions PUT; jobs PUT / GET / list / cancel — in ARM's JSON and error format. It
*runs* each command job it accepts: the job's command as a local process group (its output is the job's
std_log.txt), so the real worker runs against Azurite. Tests can preempt a job (its node reclaimed), reject a VM
size for quota, make the next answers 429/503, and look at every request. A job's `limits.timeout` ends it.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import json
import os
import re
import signal
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000aa"
RESOURCE_GROUP = "gymflow-rg"
WORKSPACE = "gymflow-ws"
LOCATION = "eastus"
IDENTITY_HEADER = "fake-identity-header"
TOKEN = "fake-azure-token"
PROVIDER = "Microsoft.MachineLearningServices"
TERMINAL = {"Completed", "Failed", "Canceled", "NotResponding"}
STOP_GRACE_S = 30.0  # a cancelled job's processes get SIGTERM, then this long before SIGKILL


@dataclass
class Job:
    name: str
    body: dict[str, Any]
    log: Path
    status: str = "Starting"
    proc: subprocess.Popen[bytes] | None = None
    created: float = field(default_factory=time.time)
    error: str = ""

    def json(self, base: str) -> dict[str, Any]:
        props = {**self.body.get("properties", {}), "status": self.status}
        if self.error:
            props["properties"] = {**props.get("properties", {}), "azureml.error": self.error}
        return {"id": f"{base}/jobs/{self.name}", "name": self.name, "type": f"{PROVIDER}/workspaces/jobs",
                "properties": props,
                "systemData": {"createdAt": _iso(self.created), "createdBy": "gymflow-test"}}


class FakeAzureML:
    """The server; `url` for AZUREML_DEV_URL_MFE, `ca_bundle` for REQUESTS_CA_BUNDLE, `identity_endpoint`."""

    def __init__(self, folder: Path, job_env: dict[str, str] | None = None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.job_env = dict(job_env or os.environ)
        self.workspaces = {(SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE)}
        self.computes: dict[str, dict[str, Any]] = {}
        self.environments: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, Job] = {}
        self.no_quota: set[str] = set()  # VM sizes the subscription has no quota for
        self.fail_next: list[int] = []  # status codes for the next API answers (429, 503)
        self.requests: list[tuple[str, str, dict[str, Any] | None]] = []
        self.peak = 0  # the most jobs that ran at once
        self.time_scale = 1.0  # seconds of the fake's clock per second of a job's limits.timeout
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self.ca_bundle = folder / "fake-azureml-cert.pem"
        context = _tls(folder, self.ca_bundle)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.identity = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())  # plain http, as on a real host
        self.identity.daemon_threads = True
        self.threads = [threading.Thread(target=s.serve_forever, name="fake-azureml", daemon=True)
                        for s in (self.server, self.identity)]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    @property
    def identity_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.identity.server_address[1]}/msi/token"

    def credential_env(self) -> dict[str, str]:
        """The environment under which DefaultAzureCredential takes its token from this stand-in (a managed
        identity), and MLClient talks to it."""
        return {"IDENTITY_ENDPOINT": self.identity_endpoint, "IDENTITY_HEADER": IDENTITY_HEADER,
                "AZUREML_DEV_URL_MFE": self.url, "REQUESTS_CA_BUNDLE": str(self.ca_bundle)}

    def __enter__(self) -> FakeAzureML:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self.lock:
            for job in self.jobs.values():
                _kill(job.proc)
        for server in (self.server, self.identity):
            server.shutdown()
            server.server_close()

    # -- what tests look at and do ---------------------------------------------------------------
    def calls(self, method: str, pattern: str) -> list[dict[str, Any] | None]:
        """Bodies of the requests whose method is method and whose path matches pattern."""
        return [body for m, path, body in self.requests if m == method and re.search(pattern, path)]

    def active(self) -> list[Job]:
        with self.lock:
            return [job for job in self.jobs.values() if job.status not in TERMINAL]

    def preempt(self, name: str) -> None:
        """A low-priority node reclaimed under the job: its processes die and the job fails, saying so."""
        with self.lock:
            job = self.jobs[name]
            job.status, job.error = "Failed", "the low-priority node running this job was preempted"
        _kill(job.proc, grace_s=0)

    # -- a job's life --------------------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        props = job.body.get("properties", {})
        env = {**self.job_env, **(props.get("environmentVariables") or {}), "AZUREML_RUN_ID": job.name,
               "AZUREML_EXPERIMENT_NAME": str(props.get("experimentName", ""))}
        job.log.parent.mkdir(parents=True, exist_ok=True)
        with job.log.open("ab") as out:
            job.proc = subprocess.Popen(["bash", "-c", str(props.get("command", ""))], env=env, stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                        cwd=job.log.parent)
        job.status = "Running"
        self.peak = max(self.peak, len(self.active()))
        threading.Thread(target=self._follow, args=(job,), daemon=True).start()
        timeout = _seconds(((props.get("limits") or {}).get("timeout")) or "")
        if timeout:
            timer = threading.Timer(timeout * self.time_scale, self._time_up, args=(job,))
            timer.daemon = True
            timer.start()

    def _follow(self, job: Job) -> None:
        assert job.proc is not None
        code = job.proc.wait()
        with self.lock:
            if job.status in ("Running", "Starting"):
                job.status = "Completed" if code == 0 else "Failed"
                job.error = "" if code == 0 else f"the job's command exited with code {code}"
            elif job.status == "CancelRequested":
                job.status = "Canceled"

    def _time_up(self, job: Job) -> None:
        with self.lock:
            if job.status in TERMINAL:
                return
            job.status, job.error = "Failed", "the job exceeded its timeout (limits.timeout) and was stopped"
        _kill(job.proc, grace_s=0)

    def _cancel(self, job: Job) -> None:
        with self.lock:
            if job.status in TERMINAL:
                return
            job.status = "CancelRequested"
        threading.Thread(target=_kill, args=(job.proc,), daemon=True).start()

    # -- the API -----------------------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any] | None,
               headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        if path == "/msi/token":
            return self._token(query, headers)
        if m := re.match(r"^/operations/([^/]+)$", path):
            return 200, {"status": "Succeeded", "name": m[1]}, {}
        m = re.match(rf"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/{PROVIDER}/workspaces/([^/]+)(/.*)?$",
                     path, re.IGNORECASE)
        if not m:
            return 404, _error("ResourceNotFound", f"no route {path}"), {}
        base = path[:m.end(3)]
        if (m[1], m[2], m[3]) not in self.workspaces:
            return 404, _error("ResourceNotFound", f"The Resource '{PROVIDER}/workspaces/{m[3]}' under resource group "
                                                   f"'{m[2]}' was not found."), {}
        rest = m[4] or ""
        with self.lock:
            if rest == "":
                return 200, self._workspace(base, m[3]), {}
            if c := re.match(r"^/computes/([^/]+)$", rest):
                return self._compute(method, base, c[1], body)
            if e := re.match(r"^/environments/([^/]+)/versions/([^/]+)$", rest):
                env = {"id": f"{base}{rest}", "name": e[2], "type": f"{PROVIDER}/workspaces/environments/versions",
                       "properties": {**((body or {}).get("properties") or {}), "provisioningState": "Succeeded"}}
                if method == "PUT":
                    self.environments[f"{e[1]}:{e[2]}"] = env
                found = self.environments.get(f"{e[1]}:{e[2]}")
                return (200, found, {}) if found else (404, _error("UserError", f"environment {e[1]}:{e[2]} not found"), {})
            if rest == "/jobs":
                view = query.get("listViewType", ["ActiveOnly"])[0]
                jobs = [j.json(base) for j in self.jobs.values() if view == "All" or j.status not in TERMINAL]
                return 200, {"value": jobs}, {}
            if j := re.match(r"^/jobs/([^/]+)(/cancel)?$", rest):
                return self._job(method, base, j[1], bool(j[2]), body)
        return 404, _error("ResourceNotFound", f"no route {path}"), {}

    def _token(self, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        if headers.get("x-identity-header") != IDENTITY_HEADER:
            return 401, {"error": "invalid_request", "error_description": "the X-IDENTITY-HEADER is not this host's"}, {}
        resource = query.get("resource", [""])[0]
        return 200, {"access_token": TOKEN, "expires_on": str(int(time.time()) + 3600), "resource": resource,
                     "token_type": "Bearer"}, {}

    def _workspace(self, base: str, name: str) -> dict[str, Any]:
        return {"id": base, "name": name, "type": f"{PROVIDER}/workspaces", "location": LOCATION,
                "identity": {"type": "SystemAssigned"}, "sku": {"name": "Basic", "tier": "Basic"},
                "properties": {"friendlyName": name, "provisioningState": "Succeeded",
                               "discoveryUrl": f"{self.url}/discovery", "mlFlowTrackingUri": f"azureml://{LOCATION}/"}}

    def _compute(self, method: str, base: str, name: str, body: dict[str, Any] | None) -> tuple[int, Any, dict[str, str]]:
        if method == "PUT":
            props = ((body or {}).get("properties") or {})
            size = str((props.get("properties") or {}).get("vmSize", ""))
            if size in self.no_quota:
                return 400, _error("QuotaExceeded", f"Operation could not be completed as it results in exceeding "
                                                    f"approved {size} Family Cores quota. Location: {LOCATION}."), {}
            self.computes[name] = {"id": f"{base}/computes/{name}", "name": name, "location": LOCATION,
                                   "type": f"{PROVIDER}/workspaces/computes",
                                   "properties": {**props, "provisioningState": "Succeeded"}}
            op = f"{self.url}/operations/compute-{next(self._ids)}"
            return 201, self.computes[name], {"Azure-AsyncOperation": op, "retry-after-ms": "10"}
        found = self.computes.get(name)
        if found is None:
            return 404, _error("ResourceNotFound", f"Compute {name} not found in workspace"), {}
        return 200, found, {}

    def _job(self, method: str, base: str, name: str, cancel: bool, body: dict[str, Any] | None
             ) -> tuple[int, Any, dict[str, str]]:
        job = self.jobs.get(name)
        if method == "PUT":
            if job is not None:
                return 400, _error("UserError", f"A job with the name {name} already exists"), {}
            props = (body or {}).get("properties") or {}
            compute = str(props.get("computeId", "")).rsplit("/", 1)[-1]
            if compute not in self.computes:
                return 400, _error("UserError", f"Compute {compute} is not found in the workspace"), {}
            job = Job(name, body or {}, self.folder / "jobs" / name / "user_logs" / "std_log.txt")
            self.jobs[name] = job
            self._run(job)
            return 201, job.json(base), {}
        if job is None:
            return 404, _error("UserError", f"Job {name} not found"), {}
        if cancel:
            self._cancel(job)
            return 202, None, {"Location": f"{self.url}/operations/cancel-{name}", "retry-after-ms": "10"}
        return 200, job.json(base), {}

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
                headers = {k.lower(): v for k, v in self.headers.items()}
                if url.path != "/msi/token":
                    fake.requests.append((self.command, url.path, body))
                    if not headers.get("authorization", "").endswith(TOKEN):
                        return self._answer(401, _error("AuthenticationFailed", "no valid bearer token"), {})
                    with fake.lock:
                        failing = fake.fail_next.pop(0) if fake.fail_next else None
                    if failing:
                        return self._answer(failing, _error("TooManyRequests" if failing == 429 else "ServiceUnavailable",
                                                            "try again later"), {"Retry-After": "1"})
                code, answer, extra = fake._route(self.command, url.path, parse_qs(url.query), body, headers)
                self._answer(code, answer, extra)

            def _answer(self, code: int, answer: Any, extra: dict[str, str]) -> None:
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("x-ms-request-id", f"fake-{next(fake._ids)}")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve

        return Handler


def _kill(proc: subprocess.Popen[bytes] | None, grace_s: float = STOP_GRACE_S) -> None:
    """Everything the job started, as a node's container stops: SIGTERM, grace_s to end, then SIGKILL."""
    import psutil

    def tree() -> list[psutil.Process]:
        try:
            top = psutil.Process(proc.pid)
            return [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def send(procs: list[psutil.Process], sig: signal.Signals) -> None:
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    if proc is None or proc.poll() is not None:
        return
    procs = tree()
    if grace_s > 0:
        send(procs, signal.SIGTERM)
        _, procs = psutil.wait_procs(procs, timeout=grace_s)
    send([*procs, *tree()], signal.SIGKILL)
    psutil.wait_procs(procs, timeout=5)
    proc.wait()


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": [], "additionalInfo": []}}


def _iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _seconds(duration: str) -> float:
    """ISO 8601 PT..H..M..S (what CommandJobLimits.timeout goes over the wire as) in seconds; 0 when absent."""
    m = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?)?", duration)
    if not m:
        return 0.0
    days, hours, minutes, seconds = (float(g or 0) for g in m.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


def _tls(folder: Path, cert_path: Path) -> ssl.SSLContext:
    """A self-signed certificate for 127.0.0.1 (also the CA bundle the client trusts) and a server context."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = folder / "fake-azureml-key.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context
