"""A loopback stand-in for the Argo Server's workflow API, for the tests of `kubellm ui`'s Argo client:
plain HTTP on a free port, real sockets, answers shaped as in argo-workflows' api/openapi-spec/swagger.json
(WorkflowList, Workflow with status.nodes of NodeStatus, grpc-gateway errors, a log stream of
{"result": LogEntry} lines).

    with ArgoServer(token="Bearer t0k") as argo:
        argo.add(workflow("distill-x7k2p", "Running"))
        Argo(argo.url, "argo", "t0k").list()
    argo.requests      # every request: {"method", "path", "query", "authorization", "body"}

Create gives the workflow a name from its generateName and phase Pending; stop marks it Failed with
Argo's "Stopped with strategy 'Stop'"; retry puts a Failed/Error workflow back to Running. A pod's log is
`logs[podName]`; a request without the token gets 401 as the server's auth does.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from workflows.ui.argo import pod_name

T0 = "2026-12-03T10:00:00Z"


def node(wf_name: str, nid: str, task: str, phase: str, template: str | None = None, progress: str = "1/1",
         started: str = T0, finished: str | None = "2026-12-03T10:01:30Z", type_: str = "Pod") -> dict:
    return {"id": nid, "name": f"{wf_name}.{task}", "displayName": task, "type": type_,
            "templateName": template or task, "templateScope": f"local/{wf_name}", "phase": phase,
            "boundaryID": wf_name, "startedAt": started, "finishedAt": finished if phase != "Running" else None,
            "progress": progress, "resourcesDuration": {"cpu": 12, "memory": 40}, "hostNodeName": "kind-worker",
            "outputs": {"exitCode": "0"} if phase == "Succeeded" else None}


def workflow(name: str, phase: str = "Running", pipeline: str = "distill", namespace: str = "argo") -> dict:
    """A Workflow as GET /api/v1/workflows/{ns}/{name} returns it: a DAG root and three pods."""
    nodes = {name: {"id": name, "name": name, "displayName": name, "type": "DAG", "templateName": "main",
                    "phase": phase, "startedAt": T0, "finishedAt": None, "progress": "1/3",
                    "children": [f"{name}-1111"]},
             f"{name}-1111": node(name, f"{name}-1111", "check-params", "Succeeded"),
             f"{name}-2222": node(name, f"{name}-2222", "harvest", phase if phase != "Pending" else "Pending",
                                  progress="40/120", finished=None if phase == "Running" else "2026-12-03T10:05:00Z"),
             f"{name}-3333": node(name, f"{name}-3333", "evaluate", "Omitted", type_="Skipped", started=None)}
    return {"metadata": {"name": name, "generateName": f"{pipeline}-", "namespace": namespace,
                         "uid": "7f3c1e2a-4b5d-4c6e-8f90-a1b2c3d4e5f6", "resourceVersion": "48213",
                         "creationTimestamp": T0,
                         "labels": {"app.kubernetes.io/part-of": "kubellm", "kubellm/pipeline": pipeline,
                                    "workflows.argoproj.io/phase": phase},
                         "annotations": {"workflows.argoproj.io/pod-name-format": "v2"}},
            "spec": {"entrypoint": "main", "arguments": {"parameters": [{"name": "student", "value": "smollm2-135m"},
                                                                        {"name": "steps", "value": "60"}]}},
            "status": {"phase": phase, "startedAt": T0, "finishedAt": None if phase in ("Running", "Pending") else
                       "2026-12-03T10:06:00Z", "progress": "1/3", "nodes": nodes,
                       "message": "" if phase != "Failed" else "child 'harvest' failed"}}


class ArgoServer:
    def __init__(self, token: str | None = None, namespace: str = "argo") -> None:
        self.token, self.namespace = token, namespace
        self.workflows: dict[str, dict] = {}
        self.logs: dict[str, str] = {}
        self.requests: list[dict] = []
        self._n = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, code: int, body, content_type: str = "application/json") -> None:
                data = (json.dumps(body) if not isinstance(body, str) else body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                outer.requests.append({"method": method, "path": url.path, "query": parse_qs(url.query),
                                       "authorization": self.headers.get("Authorization"), "body": body})
                if outer.token and self.headers.get("Authorization") != outer.token:
                    return self._answer(401, {"code": 16, "message": "token not valid. see https://argo-workflows"
                                                                     ".readthedocs.io/en/latest/faq/"})
                self._answer(*outer.route(method, url.path, parse_qs(url.query), body))

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, wf: dict) -> dict:
        self.workflows[wf["metadata"]["name"]] = wf
        return wf

    def pod(self, name: str, task: str) -> str:
        wf = self.workflows[name]
        return next(pod_name(wf, n) for n in wf["status"]["nodes"].values() if n.get("displayName") == task)

    def route(self, method: str, path: str, query: dict, body) -> tuple:
        m = re.fullmatch(r"/api/v1/workflows/([^/]+)(?:/([^/]+))?(?:/(stop|retry|log))?", path)
        if not m:
            return 404, {"code": 5, "message": "Not Found"}
        ns, name, action = m.groups()
        if name is None:
            if method == "GET":
                items = [w for w in self.workflows.values() if w["metadata"]["namespace"] == ns]
                return 200, {"metadata": {"resourceVersion": "48213"}, "items": items or None}
            if method == "POST":
                return self._create(ns, body)
        wf = self.workflows.get(name)
        if wf is None or wf["metadata"]["namespace"] != ns:
            return 404, {"code": 5, "message": f'workflows.argoproj.io "{name}" not found'}
        if action is None and method == "GET":
            return 200, wf
        if action == "stop" and method == "PUT":
            wf["spec"]["shutdown"] = "Stop"
            now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            wf["status"] |= {"phase": "Failed", "message": "Stopped with strategy 'Stop'", "finishedAt": now}
            return 200, wf
        if action == "retry" and method == "PUT":
            if wf["status"]["phase"] not in ("Failed", "Error"):
                return 409, {"code": 9, "message": f"workflow must be Failed/Error to retry; it is {wf['status']['phase']}"}
            wf["status"] |= {"phase": "Running", "message": "", "finishedAt": None}
            return 200, wf
        if action == "log" and method == "GET":
            pod = (query.get("podName") or [""])[0]
            lines = self.logs.get(pod, "").splitlines()
            tail = int((query.get("logOptions.tailLines") or ["0"])[0] or 0)
            lines = lines[-tail:] if tail else lines
            return 200, "".join(json.dumps({"result": {"content": ln, "podName": pod}}) + "\n" for ln in lines)
        return 405, {"code": 12, "message": "Method Not Allowed"}

    def _create(self, ns: str, body: dict) -> tuple:
        wf = (body or {}).get("workflow")
        if not wf or not wf.get("spec"):
            return 400, {"code": 3, "message": "workflow is required"}
        self._n += 1
        name = wf["metadata"].get("name") or f"{wf['metadata']['generateName']}{self._n:05d}"
        created = json.loads(json.dumps(wf)) | {"status": {"phase": "Pending", "progress": "0/0", "nodes": {}}}
        created["metadata"] |= {"name": name, "namespace": ns, "uid": f"uid-{self._n}", "creationTimestamp": T0}
        self.workflows[name] = created
        return 200, created

    def __enter__(self) -> "ArgoServer":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
