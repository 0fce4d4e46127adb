"""Resource templates on this machine: a small local stand-in for the Kubernetes objects a workflow applies.

Argo runs a resource template as `kubectl <action> -f manifest`, then polls the object until its
successCondition or failureCondition holds (docs/runner.md, "Resource templates"). Here the objects
live in a folder (`<cluster>/<namespace>/<kind>/<name>/object.json`) that outlives the run, and:

- ConfigMap: stored; a Deployment that mounts it sees its `data` as files.
- Deployment: its pod's one container runs as one detached process (one replica, whatever
  spec.replicas says), with the container's command, args, env and volume mounts mapped to local
  folders; it keeps serving after the run ends, until a later apply replaces it or
  `kubellm deployments --stop` ends it. Its status is the one Kubernetes reports for one replica:
  updated, ready and available once the readiness probe answers.
- A Service in front of a Deployment is not emulated; each running Deployment's address is
  published in `<cluster>/endpoints.json` under the names a same-named Service would have
  (`name`, `name.namespace`, `name.namespace.svc[.cluster.local]`), for `steps.client.local_url`.

Anything else (other kinds, delete/get/replace, flags, output parameters from the object) is refused
before the run starts (supported.py).
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from workflows.argo import conditions
from workflows.runner.errors import TaskError
from workflows.runner.expressions import k8s_expand

KINDS = {("v1", "ConfigMap"): "configmaps", ("apps/v1", "Deployment"): "deployments"}
ACTIONS = ("apply", "create", "patch")
MERGE_STRATEGIES = ("strategic", "merge")
# strategic merge: lists of objects merged item by item on this key (Kubernetes' patchMergeKey)
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name",
              "tolerations": "key"}
NAMESPACE = "default"
STOP_GRACE_S = 15.0


def read_manifest(text: str, where: str) -> dict:
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TaskError(f"{where}: not valid YAML after substitution: {' '.join(str(e).split())}") from None
    if not isinstance(obj, dict):
        raise TaskError(f"{where}: must be one Kubernetes object (a mapping)")
    return obj


def kind_folder(obj: dict, where: str) -> str:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in KINDS:
        known = ", ".join(f"{v} {k}" for v, k in KINDS)
        raise TaskError(f"{where}: {key[0]} {key[1]} cannot run locally (the local cluster emulates {known}; "
                        "docs/runner.md)")
    if not (obj.get("metadata") or {}).get("name"):
        raise TaskError(f"{where}: metadata.name is required")
    return KINDS[key]


def strategic_merge(base: Any, patch: Any, strategic: bool = True) -> Any:
    """A JSON merge patch (RFC 7386), plus, with `strategic`, Kubernetes' merge of object lists by key."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif strategic and k in MERGE_KEYS and isinstance(v, list) and isinstance(out.get(k), list):
            key = MERGE_KEYS[k]
            merged = list(out[k])
            for item in v:
                at = next((i for i, b in enumerate(merged) if isinstance(b, dict) and isinstance(item, dict)
                           and b.get(key) == item.get(key)), None)
                if at is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[at] = strategic_merge(merged[at], item, strategic)
            out[k] = merged
        else:
            out[k] = strategic_merge(out.get(k), v, strategic) if isinstance(v, dict) else copy.deepcopy(v)
    return out


class LocalCluster:
    """The objects of one machine; `root` is shared by every run that uses it."""

    def __init__(self, root: Path, claims: dict[str, Path], inherited_env: dict[str, str]) -> None:
        self.root = Path(root)
        self.claims = claims  # PVC claim name -> local folder (the workflow's volumes)
        self.env = inherited_env

    def folder(self, obj: dict, kinds: str) -> Path:
        ns = (obj.get("metadata") or {}).get("namespace") or NAMESPACE
        return self.root / ns / kinds / obj["metadata"]["name"]

    def get(self, namespace: str, kinds: str, name: str) -> dict | None:
        try:
            return json.loads((self.root / namespace / kinds / name / "object.json").read_text())
        except (OSError, ValueError):
            return None

    # -- kubectl <action> ------------------------------------------------------------------------

    def act(self, action: str, manifest: dict, merge: str, where: str) -> dict:
        """Apply, create or patch one object; returns the stored object (a Deployment's process started)."""
        kinds = kind_folder(manifest, where)
        folder = self.folder(manifest, kinds)
        current = self.get(folder.parent.parent.name, kinds, folder.name)
        name = f"{kinds[:-1]}/{folder.name}"
        if action == "create" and current is not None:
            raise TaskError(f"{where}: {name} already exists in the local cluster (create refuses it, as kubectl does; "
                            "use apply, or `kubellm deployments --stop` it)")
        if action == "patch":
            if current is None:
                raise TaskError(f"{where}: {name} not found in the local cluster: a patch needs the object "
                                "(apply it first)")
            obj = strategic_merge(current, manifest, merge == "strategic")
        else:
            obj = copy.deepcopy(manifest)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", NAMESPACE)
        old_spec = (current or {}).get("spec")
        # metadata.generation counts changes of the spec, as the API server does
        meta["generation"] = (current or {}).get("metadata", {}).get("generation", 0) + (
            1 if current is None or old_spec != obj.get("spec") else 0)
        obj.pop("status", None)
        folder.mkdir(parents=True, exist_ok=True)
        if kinds == "configmaps":
            data = folder / "data"
            data.mkdir(exist_ok=True)
            for f in data.iterdir():
                f.unlink()
            for k, v in (obj.get("data") or {}).items():
                (data / k).write_text(str(v))
        self._write(folder / "object.json", obj)
        if kinds == "deployments" and (old_spec != obj.get("spec") or not self._alive(folder)):
            self._roll(folder, obj, where)
        return obj

    @staticmethod
    def _write(path: Path, obj: Any) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, path)

    # -- Deployments as processes ------------------------------------------------------------------

    def _roll(self, folder: Path, obj: dict, where: str) -> None:
        """Replace the Deployment's process with one for the new pod template (the old one stops first:
        both would bind the same port)."""
        stop(folder)
        pod = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        containers = pod.get("containers") or []
        if len(containers) != 1 or pod.get("initContainers"):
            raise TaskError(f"{where}: the local cluster runs Deployments with exactly one container and no "
                            f"initContainers (this one has {len(containers)})")
        c = containers[0]
        if not c.get("command"):
            raise TaskError(f"{where}: spec.template.spec.containers[0].command is required locally (the image's "
                            "entrypoint is not known here)")
        mapping = self._mounts(folder, pod, c, where)

        def rewrite(s: str) -> str:
            for cpath, local in sorted(mapping, key=lambda m: -len(m[0])):
                cpath = cpath.rstrip("/")
                if s == cpath or s.startswith(cpath + "/"):
                    return str(local) + s[len(cpath):]
            return s

        env = dict(self.env)
        defined: dict[str, str] = {}
        for j, e in enumerate(c.get("env") or []):
            if "valueFrom" in e:
                raise TaskError(f"{where}: spec.template.spec.containers[0].env[{j}].valueFrom is not supported locally")
            defined[e["name"]] = env[e["name"]] = k8s_expand(rewrite(str(e.get("value", ""))), defined)
        argv = [k8s_expand(rewrite(str(a)), defined) for a in (c.get("command") or []) + (c.get("args") or [])]
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        env["KUBELLM_LOCAL_RUN"] = "1"
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(folder / "log.txt", "ab") as log:
            log.write(f"=== started {time.strftime('%Y-%m-%dT%H:%M:%S')}: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=str(folder))
        probe = c.get("readinessProbe") or {}
        port = _port(c, (probe.get("httpGet") or {}).get("port")) if probe.get("httpGet") else None
        self._write(folder / "process.json", {
            "pid": proc.pid, "argv": argv, "started": time.time(),
            "generation": obj["metadata"]["generation"],
            "probe": {"port": port, "path": probe["httpGet"].get("path") or "/"} if port else None,
            "ports": {str(p.get("name") or p["containerPort"]): int(p["containerPort"])
                      for p in c.get("ports") or [] if p.get("containerPort")},
        })
        self._publish()

    def _mounts(self, folder: Path, pod: dict, c: dict, where: str) -> list[tuple[str, Path]]:
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        mapping = []
        for j, m in enumerate(c.get("volumeMounts") or []):
            v = volumes.get(m.get("name"))
            at = f"{where}: spec.template.spec.containers[0].volumeMounts[{j}]"
            if v is None:
                raise TaskError(f"{at}: no volume named {m.get('name')!r} in the pod template")
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"].get("claimName")
                local = self.claims.get(claim) or self.root / "claims" / str(claim)
            elif "configMap" in v:
                cm = v["configMap"].get("name")
                local = self.root / (folder.parent.parent.name) / "configmaps" / str(cm) / "data"
                if not local.is_dir() and not v["configMap"].get("optional"):
                    raise TaskError(f"{at}: ConfigMap {cm!r} is not in the local cluster (apply it first)")
            elif "emptyDir" in v:
                local = folder / "volumes" / str(m.get("name"))
            else:
                raise TaskError(f"{at}: volume {m.get('name')!r} has no local equivalent (persistentVolumeClaim, "
                                "configMap and emptyDir do)")
            local = local / m["subPath"] if m.get("subPath") else local
            local.mkdir(parents=True, exist_ok=True)
            mapping.append((m["mountPath"], local))
        return mapping

    @staticmethod
    def _alive(folder: Path) -> bool:
        proc = _read(folder / "process.json")
        return bool(proc) and _running(proc["pid"])

    def status(self, obj: dict) -> dict:
        """The object with the status Kubernetes would report for it (Deployments: one replica)."""
        kinds = KINDS[(obj["apiVersion"], obj["kind"])]
        if kinds != "deployments":
            return obj
        folder = self.folder(obj, kinds)
        proc = _read(folder / "process.json") or {}
        alive = bool(proc) and _running(proc["pid"])
        ready = alive and _probe(proc.get("probe"))
        status: dict[str, Any] = {"observedGeneration": obj["metadata"]["generation"], "replicas": 1,
                                  "updatedReplicas": 1}
        if ready:
            status |= {"readyReplicas": 1, "availableReplicas": 1}
        else:
            status["unavailableReplicas"] = 1
        status["conditions"] = [
            {"type": "Available", "status": "True" if ready else "False"},
            {"type": "Progressing", "status": "True",
             "reason": "NewReplicaSetAvailable" if ready else "ReplicaSetUpdated"}]
        return obj | {"status": status}

    def wait_state(self, obj: dict, success: list, failure: list) -> tuple[str | None, str]:
        """(outcome of the conditions or None, a line on why it is not done) for the object now."""
        live = self.status(obj)
        folder = self.folder(obj, KINDS[(obj["apiVersion"], obj["kind"])])
        outcome = conditions.check(live, success, failure)
        if outcome is None and obj["kind"] == "Deployment" and not self._alive(folder):
            log = (folder / "log.txt").read_text(errors="replace").splitlines()[-20:] if (folder / "log.txt").exists() else []
            return "failed: its container exited (the local cluster does not restart it); log tail:\n" + "\n".join(log), ""
        return outcome, json.dumps(live.get("status") or {})

    def _publish(self) -> None:
        """endpoints.json: Service-style names of each running Deployment -> its local base URL."""
        table: dict[str, str] = {}
        for proc_file in sorted(self.root.glob("*/deployments/*/process.json")):
            proc = _read(proc_file) or {}
            if not proc or not _running(proc.get("pid", 0)):
                continue
            ports = proc.get("ports") or {}
            port = ports.get("http") or next(iter(ports.values()), None)
            if port is None:
                continue
            name, ns = proc_file.parent.name, proc_file.parent.parent.parent.name
            for host in (name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"):
                table[host] = f"http://127.0.0.1:{port}"
        self.root.mkdir(parents=True, exist_ok=True)
        self._write(self.root / "endpoints.json", table)


def _port(container: dict, port: Any) -> int | None:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie child of this process counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _probe(probe: dict | None) -> bool:
    if not probe:
        return True
    try:
        conn = http.client.HTTPConnection("127.0.0.1", probe["port"], timeout=2)
        conn.request("GET", probe["path"])
        ok = 200 <= conn.getresponse().status < 400
        conn.close()
        return ok
    except (OSError, http.client.HTTPException):
        return False


def stop(folder: Path) -> bool:
    """End a Deployment's process (SIGTERM, then SIGKILL); True if one was running."""
    proc = _read(folder / "process.json")
    if not proc or not _running(proc["pid"]):
        return False
    try:
        os.killpg(proc["pid"], signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    end = time.monotonic() + STOP_GRACE_S
    while _running(proc["pid"]) and time.monotonic() < end:
        time.sleep(0.1)
    if _running(proc["pid"]):
        try:
            os.killpg(proc["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True


def deployments(root: Path) -> list[dict]:
    """Every Deployment of the local cluster: namespace, name, pid, running, url, model version annotation."""
    out = []
    endpoints = _read(Path(root) / "endpoints.json") or {}
    for obj_file in sorted(Path(root).glob("*/deployments/*/object.json")):
        obj = _read(obj_file) or {}
        proc = _read(obj_file.parent / "process.json") or {}
        name, ns = obj_file.parent.name, obj_file.parent.parent.parent.name
        running = bool(proc) and _running(proc.get("pid", 0))
        out.append({"namespace": ns, "name": name, "pid": proc.get("pid"), "running": running,
                    "url": endpoints.get(name) if running else None, "folder": str(obj_file.parent),
                    "annotations": ((obj.get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations") or {}})
    return out


def stop_deployments(root: Path, name: str | None = None) -> list[str]:
    """Stop the named Deployment (every one when None); the names stopped."""
    stopped = []
    for d in deployments(root):
        if name in (None, d["name"]) and stop(Path(d["folder"])):
            stopped.append(f"{d['namespace']}/{d['name']}")
    LocalCluster(Path(root), {}, {})._publish()
    return stopped
