"""A small client of the Argo Server's HTTP API (the paths and shapes of its api/openapi-spec/swagger.json):

    GET  /api/v1/workflows/{ns}                  WorkflowList: items[].metadata, .status
    GET  /api/v1/workflows/{ns}/{name}           Workflow: status.nodes{id: NodeStatus}
    POST /api/v1/workflows/{ns}                  WorkflowCreateRequest {namespace, workflow} -> Workflow
    PUT  /api/v1/workflows/{ns}/{name}/stop      WorkflowStopRequest {name, namespace}
    PUT  /api/v1/workflows/{ns}/{name}/retry     WorkflowRetryRequest {name, namespace}
    GET  /api/v1/workflows/{ns}/{name}/log?podName=P&logOptions.container=main
                                                 a stream of {"result": {"content", "podName"}} lines

Errors come back as grpc-gateway's {"code", "message"}. The bearer token (env ARGO_TOKEN, as `argo auth
token` prints it, with or without "Bearer ") goes in the Authorization header and nowhere else: no
message, page or log line carries it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx

POD_NAME_FORMAT = "workflows.argoproj.io/pod-name-format"
MAX_POD_PREFIX = 253 - 10 - 1  # workflow/util/pod_name.go: room for "-" and the hash


class ArgoError(RuntimeError):
    """The Argo Server could not be reached or refused a request; the message says which and what to do."""


def fnv32a(text: str) -> int:
    h = 2166136261
    for b in text.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def pod_name(workflow: dict, node: dict) -> str:
    """The pod of a node as Argo names it (workflow/util/pod_name.go GeneratePodName; v1 = the node id)."""
    meta = workflow.get("metadata") or {}
    if (meta.get("annotations") or {}).get(POD_NAME_FORMAT) == "v1":
        return node.get("id", "")
    wf_name, node_name = meta.get("name", ""), node.get("name", "")
    if node.get("type") == "Container":
        node_name = node_name.rsplit(".", 1)[0]
    if wf_name == node_name:
        return wf_name
    template = node.get("templateName") or (node.get("templateRef") or {}).get("template") or ""
    prefix = (f"{wf_name}-{template}" if template else wf_name)[:MAX_POD_PREFIX]
    return f"{prefix}-{fnv32a(node_name)}"


def _seconds(start: str | None, end: str | None) -> float | None:
    try:
        a = dt.datetime.fromisoformat(start.replace("Z", "+00:00")) if start else None
        b = dt.datetime.fromisoformat(end.replace("Z", "+00:00")) if end else dt.datetime.now(dt.timezone.utc)
    except ValueError:
        return None
    return round((b - a).total_seconds(), 1) if a else None


def summary(wf: dict) -> dict:
    meta, status = wf.get("metadata") or {}, wf.get("status") or {}
    return {"name": meta.get("name"), "namespace": meta.get("namespace"),
            "pipeline": (meta.get("labels") or {}).get("kubellm/pipeline") or "",
            "phase": status.get("phase") or "Pending", "message": status.get("message") or "",
            "progress": status.get("progress") or "", "started": status.get("startedAt"),
            "finished": status.get("finishedAt"), "duration_s": _seconds(status.get("startedAt"), status.get("finishedAt")),
            "parameters": {p["name"]: p.get("value") for p in ((wf.get("spec") or {}).get("arguments") or {}).get("parameters") or []}}


def nodes(wf: dict) -> list[dict]:
    """The workflow's pods (and skipped/omitted tasks), in start order."""
    rows = []
    for n in ((wf.get("status") or {}).get("nodes") or {}).values():
        if n.get("type") not in ("Pod", "Skipped", "Suspend", "Container"):
            continue
        rows.append({"id": n.get("id"), "name": n.get("displayName") or n.get("name"), "type": n.get("type"),
                     "template": n.get("templateName") or "", "phase": n.get("phase") or "Pending",
                     "progress": n.get("progress") or "", "message": n.get("message") or "",
                     "started": n.get("startedAt"), "duration_s": _seconds(n.get("startedAt"), n.get("finishedAt")),
                     "pod": pod_name(wf, n) if n.get("type") == "Pod" else None})
    return sorted(rows, key=lambda r: r["started"] or "~")


class Argo:
    """One Argo Server and namespace. Every method raises ArgoError with a message fit for a page."""

    def __init__(self, url: str, namespace: str = "argo", token: str | None = None, timeout: float = 10.0,
                 verify: bool | str = True) -> None:
        self.url, self.namespace = url.rstrip("/"), namespace
        self._auth = {"Authorization": token if token.startswith("Bearer ") else f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=self.url, timeout=timeout, verify=verify, headers=self._auth)

    def __repr__(self) -> str:  # never the token
        return f"Argo({self.url!r}, namespace={self.namespace!r}, token={'set' if self._auth else 'none'})"

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._client.request(method, path, **kw)
        except httpx.ConnectError:
            raise ArgoError(f"cannot reach the Argo Server at {self.url} (connection refused or no route): start it, "
                            "or forward its port (kubectl -n argo port-forward svc/argo-server 2746:2746), and "
                            "reload; nothing was changed") from None
        except httpx.TimeoutException:
            raise ArgoError(f"the Argo Server at {self.url} did not answer within {self._client.timeout.read}s; "
                            "nothing was changed as far as this page knows: reload to see") from None
        except httpx.HTTPError as e:
            raise ArgoError(f"request to the Argo Server at {self.url} failed: {type(e).__name__}") from None
        if r.status_code >= 400:
            try:
                msg = r.json().get("message") or r.text
            except ValueError:
                msg = r.text
            hint = {401: "; set ARGO_TOKEN (argo auth token) before starting kubellm ui",
                    403: f"; the token's ServiceAccount may not do this in namespace {self.namespace}"}.get(r.status_code, "")
            raise ArgoError(f"Argo Server: {method} {path}: {r.status_code} {str(msg)[:500]}{hint}")
        return r

    def _json(self, method: str, path: str, **kw: Any) -> dict:
        r = self._call(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            raise ArgoError(f"Argo Server: {method} {path}: the answer is not JSON ({r.text[:200]!r})") from None

    def _wf(self, name: str, action: str = "") -> str:
        return f"/api/v1/workflows/{self.namespace}/{name}" + (f"/{action}" if action else "")

    def list(self) -> list[dict]:
        items = self._json("GET", f"/api/v1/workflows/{self.namespace}").get("items") or []
        return sorted((summary(w) for w in items), key=lambda w: w["started"] or "~", reverse=True)

    def get(self, name: str) -> dict:
        wf = self._json("GET", self._wf(name))
        return summary(wf) | {"nodes": nodes(wf)}

    def submit(self, workflow: dict) -> str:
        """Create the workflow; the name the server gave it."""
        wf = self._json("POST", f"/api/v1/workflows/{self.namespace}",
                        json={"namespace": self.namespace, "workflow": workflow})
        return (wf.get("metadata") or {}).get("name") or "?"

    def stop(self, name: str) -> None:
        self._json("PUT", self._wf(name, "stop"), json={"name": name, "namespace": self.namespace})

    def retry(self, name: str) -> None:
        self._json("PUT", self._wf(name, "retry"), json={"name": name, "namespace": self.namespace})

    def log(self, name: str, pod: str, tail: int = 200) -> str:
        r = self._call("GET", self._wf(name, "log"), params={
            "podName": pod, "logOptions.container": "main", "logOptions.tailLines": str(tail)})
        lines = []
        for line in r.text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("error"):
                lines.append(f"[log stream error: {entry['error'].get('message', entry['error'])}]")
            lines.append((entry.get("result") or {}).get("content", ""))
        return "\n".join(lines[-tail:])
