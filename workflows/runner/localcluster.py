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
- TrainJob (Kubeflow Trainer, the torch-distributed runtime): `numNodes` processes, each the trainer's
  command and args with the env a Trainer node gets (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
  PET_MASTER_ADDR=127.0.0.1, PET_MASTER_PORT a free port) and the runtimePatches' volume mounts of the
  `node` container mapped as a Deployment's are. Its status is the one Trainer reports: `jobsStatus`
  for the `node` job, and a `Complete` condition when every node exited 0, `Failed` (exit codes in the
  message, the other nodes stopped) when one did not, or when spec.activeDeadlineSeconds passed. Its
  nodes live only while a run waits for it: each node's wrapper stops its command when the runner's
  process exits or stops polling the object (a run interrupted, failed or over), as a cluster deletes
  the TrainJob with its workflow (setOwnerReference).
- A Service in front of a Deployment is not emulated; each running Deployment's address is
  published in `<cluster>/endpoints.json` under the names a same-named Service would have
  (`name`, `name.namespace`, `name.namespace.svc[.cluster.local]`), for `steps.client.local_url`.

`create` with metadata.generateName names the object as the API server would (prefix + 5 characters).
Anything else (other kinds, delete/get/replace, flags, output parameters from the object) is refused
before the run starts (supported.py).
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import re
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from workflows.argo import conditions
from workflows.runner.errors import TaskError
from workflows.runner.expressions import k8s_expand

KINDS = {("v1", "ConfigMap"): "configmaps", ("apps/v1", "Deployment"): "deployments",
         ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainjobs"}
ACTIONS = ("apply", "create", "patch")
MERGE_STRATEGIES = ("strategic", "merge")
# strategic merge: lists of objects merged item by item on this key (Kubernetes' patchMergeKey)
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name",
              "tolerations": "key"}
NAMESPACE = "default"
# an argument `key=/absolute/path`: the path part is mapped like a whole path argument
KEY_VALUE = re.compile(r"([A-Za-z_][\w.-]*=)(/.*)", re.S)
STOP_GRACE_S = 15.0
# a TrainJob's nodes stop when no run has polled the object for this long (the runner polls every second)
TRAINJOB_LEASE_S = 10.0
# what an API server appends to metadata.generateName (k8s.io/apiserver names.SimpleNameGenerator)
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"

# The "pod" of one TrainJob node: runs the trainer's command in its own process group, records its exit
# code (negative: the signal that ended it), and stops it once nobody waits for the TrainJob any more:
# the runner's process has exited, or the lease file it touches while polling has gone stale.
_NODE_WRAPPER = r"""
import os, signal, subprocess, sys, time
exit_file, lease, lease_s, grace, parent = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
argv = sys.argv[6:]
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: None)  # the command, in this process group, gets it too: report how it ended
def done(code):
    with open(exit_file + ".tmp", "w") as f:
        f.write(str(code))
    os.replace(exit_file + ".tmp", exit_file)
try:
    proc = subprocess.Popen(argv)
except OSError as e:
    print(f"cannot start {argv[0]}: {e}", file=sys.stderr, flush=True)
    done(127)
    sys.exit(0)
kill_at = None
while proc.poll() is None:
    time.sleep(0.2)
    if kill_at is None:
        try:
            stale = time.time() - os.stat(lease).st_mtime > lease_s
        except OSError:
            stale = True
        why = "the runner that started it has exited" if os.getppid() != parent else (
            "no run waits for the TrainJob any more" if stale else None)
        if why:
            print(f"=== stopping this node: {why}", file=sys.stderr, flush=True)
            os.killpg(0, signal.SIGTERM)
            kill_at = time.monotonic() + grace
    elif time.monotonic() > kill_at:
        done(-signal.SIGKILL)
        os.killpg(0, signal.SIGKILL)
done(proc.returncode)
"""


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
        raise TaskError(f"{where}: metadata.name is required" + (
            " (metadata.generateName needs action create)" if (obj.get("metadata") or {}).get("generateName") else ""))
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
        """Apply, create or patch one object; returns the stored object (a Deployment's process started,
        a TrainJob's nodes)."""
        meta = manifest.get("metadata") or {}
        if action == "create" and not meta.get("name") and meta.get("generateName"):
            manifest = copy.deepcopy(manifest)
            manifest["metadata"]["name"] = self._generate_name(manifest, where)
        kinds = kind_folder(manifest, where)
        folder = self.folder(manifest, kinds)
        current = self.get(folder.parent.parent.name, kinds, folder.name)
        name = f"{kinds[:-1]}/{folder.name}"
        if action == "create" and current is not None:
            raise TaskError(f"{where}: {name} already exists in the local cluster (create refuses it, as kubectl does; "
                            "use apply, or `kubellm deployments --stop` it)")
        if kinds == "trainjobs" and current is not None and (action == "patch" or current.get("spec") != manifest.get("spec")):
            raise TaskError(f"{where}: {name} exists with another spec, and a TrainJob's spec cannot change "
                            "(Trainer refuses the update); create a new one (metadata.generateName)")
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
        if kinds == "trainjobs" and current is None:
            self._start_nodes(folder, obj, where)
        return obj

    def _generate_name(self, manifest: dict, where: str) -> str:
        prefix = manifest["metadata"]["generateName"][:58]
        kinds = kind_folder(manifest | {"metadata": {**manifest["metadata"], "name": prefix}}, where)
        ns = manifest["metadata"].get("namespace") or NAMESPACE
        while True:
            name = prefix + "".join(random.choice(_NAME_CHARS) for _ in range(5))
            if not (self.root / ns / kinds / name).exists():
                return name

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
        rewrite = _rewriter(self._mounts(folder, pod, c, where))
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

    def _mounts(self, folder: Path, pod: dict, c: dict, where: str,
                field: str = "spec.template.spec.containers[0].volumeMounts") -> list[tuple[str, Path]]:
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        mapping = []
        for j, m in enumerate(c.get("volumeMounts") or []):
            v = volumes.get(m.get("name"))
            at = f"{where}: {field}[{j}]"
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

    # -- TrainJobs as one process per node -----------------------------------------------------------

    def _start_nodes(self, folder: Path, obj: dict, where: str) -> None:
        """One wrapped process per node, with the env Trainer's torch plugin gives a node
        (pkg/runtime/framework/plugins/torch/torch.go) and the master on this machine."""
        spec = obj.get("spec") or {}
        trainer = spec.get("trainer") or {}
        nodes = trainer.get("numNodes", 1)
        if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
            raise TaskError(f"{where}: spec.trainer.numNodes must be a whole number of at least 1, got {nodes!r}")
        command = list(trainer.get("command") or [])
        if not command:
            raise TaskError(f"{where}: spec.trainer.command is required locally (the runtime image's entrypoint is "
                            "not known here)")
        from workflows.trainjob import NODE, node_pod, procs_per_node

        pod, container = node_pod(spec)
        port = _free_port()
        pet = {"PET_NNODES": str(nodes), "PET_NPROC_PER_NODE": procs_per_node(trainer),
               "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
        for f in ("process.json", "status.json"):
            (folder / f).unlink(missing_ok=True)
        self._write(folder / "lease", time.time())
        started = []
        try:
            for rank in range(nodes):
                node_dir = folder / f"node-{rank}"
                node_dir.mkdir(parents=True, exist_ok=True)
                (node_dir / "exit").unlink(missing_ok=True)
                mapping = self._mounts(node_dir, pod, container, where,
                                       f"spec.runtimePatches[].trainingRuntimeSpec (container {NODE}).volumeMounts")
                rewrite = _rewriter(mapping)
                env = dict(self.env)
                defined = dict(pet, PET_NODE_RANK=str(rank))
                env.update(defined)
                for j, e in enumerate(trainer.get("env") or []):
                    if "valueFrom" in e:
                        raise TaskError(f"{where}: spec.trainer.env[{j}].valueFrom is not supported locally")
                    defined[e["name"]] = env[e["name"]] = k8s_expand(rewrite(str(e.get("value", ""))), defined)
                argv = [k8s_expand(rewrite(str(a)), defined) for a in command + list(trainer.get("args") or [])]
                if argv[0] == "torchrun":
                    argv[:1] = [sys.executable, "-m", "torch.distributed.run"]
                elif argv[0] in ("python", "python3"):
                    argv[0] = sys.executable
                env["KUBELLM_LOCAL_RUN"] = "1"
                env.setdefault("PYTHONUNBUFFERED", "1")
                with open(node_dir / "log.txt", "ab") as log:
                    log.write(f"=== started {time.strftime('%Y-%m-%dT%H:%M:%S')}, node {rank} of {nodes}: "
                              f"{' '.join(argv)}\n".encode())
                    log.flush()
                    proc = subprocess.Popen(
                        [sys.executable, "-c", _NODE_WRAPPER, str(node_dir / "exit"), str(folder / "lease"),
                         str(TRAINJOB_LEASE_S), str(STOP_GRACE_S), str(os.getpid())] + argv,
                        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True, cwd=str(node_dir))
                started.append({"rank": rank, "pid": proc.pid})
        finally:
            self._write(folder / "process.json", {"nodes": started, "argv": command, "port": port,
                                                  "started": time.time(),
                                                  "generation": obj["metadata"]["generation"]})
            if len(started) < nodes:  # a node that could not start: the ones started stop
                stop(folder, wait=False)

    def _trainjob_status(self, obj: dict, folder: Path) -> dict:
        """Trainer's status for the nodes now: running, or Complete / Failed (kept once reached)."""
        done = _read(folder / "status.json")
        if done:
            return done
        proc = _read(folder / "process.json") or {}
        nodes = proc.get("nodes") or []
        codes: dict[int, int | None] = {}
        running = []
        for n in nodes:
            code = _read_int(folder / f"node-{n['rank']}" / "exit")
            if code is not None:
                codes[n["rank"]] = code
            elif _running(n["pid"]):
                running.append(n["rank"])
            else:
                codes[n["rank"]] = None  # ended without reporting (killed with its wrapper)
        from workflows.trainjob import NODE

        job = {"name": NODE, "ready": 0, "succeeded": 0, "failed": 0, "active": 0, "suspended": 0}
        deadline = (obj.get("spec") or {}).get("activeDeadlineSeconds")
        deadline = deadline if isinstance(deadline, int) and not isinstance(deadline, bool) else None
        failed = sorted(r for r, c in codes.items() if c != 0)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if failed or (running and deadline and time.time() - proc.get("started", time.time()) > deadline):
            # JobSet fails the node Job and deletes its other pods
            if running:
                stop(folder, wait=False)
            codes_text = ", ".join(f"node {r}: {_ended(codes.get(r, 'running'))}" for r in sorted({n["rank"] for n in nodes}))
            if failed:
                reason, message = "FailedJobs", f"node {failed[0]} {_ended(codes[failed[0]])} (exit codes: {codes_text})"
            else:
                reason, message = "DeadlineExceeded", f"activeDeadlineSeconds ({deadline}) exceeded (exit codes: {codes_text})"
            status = {"conditions": [{"type": "Failed", "status": "True", "reason": reason, "message": message,
                                      "lastTransitionTime": now}],
                      "jobsStatus": [job | {"failed": 1}], "failedNodes": failed}
        elif nodes and not running:
            status = {"conditions": [{"type": "Complete", "status": "True", "reason": "AllJobsCompleted",
                                      "message": "jobset completed successfully", "lastTransitionTime": now}],
                      "jobsStatus": [job | {"succeeded": 1}]}
        else:
            return {"jobsStatus": [job | {"active": 1, "ready": int(len(running) == len(nodes))}]}
        self._write(folder / "status.json", status)
        return status

    def status(self, obj: dict) -> dict:
        """The object with the status Kubernetes would report for it (Deployments: one replica)."""
        kinds = KINDS[(obj["apiVersion"], obj["kind"])]
        if kinds == "trainjobs":
            status = self._trainjob_status(obj, self.folder(obj, kinds))
            return obj | {"status": {k: v for k, v in status.items() if k != "failedNodes"}}
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
        folder = self.folder(obj, KINDS[(obj["apiVersion"], obj["kind"])])
        if obj["kind"] == "TrainJob":
            (folder / "lease").touch()  # its nodes keep running while a run waits for it
        live = self.status(obj)
        outcome = conditions.check(live, success, failure)
        if obj["kind"] == "TrainJob":
            return self._trainjob_outcome(folder, live, outcome), json.dumps(live.get("status") or {})
        if outcome is None and obj["kind"] == "Deployment" and not self._alive(folder):
            log = (folder / "log.txt").read_text(errors="replace").splitlines()[-20:] if (folder / "log.txt").exists() else []
            return "failed: its container exited (the local cluster does not restart it); log tail:\n" + "\n".join(log), ""
        return outcome, json.dumps(live.get("status") or {})

    def _trainjob_outcome(self, folder: Path, live: dict, outcome: str | None) -> str | None:
        """The conditions' outcome, with the failed node's log tail; a finished TrainJob that neither
        condition matches fails the node (Argo would wait for ever)."""
        status = live.get("status") or {}
        final = next((c for c in status.get("conditions") or [] if c["type"] in ("Complete", "Failed")), None)
        if outcome is None and final is None or outcome == "succeeded":
            return outcome
        done = _read(folder / "status.json") or {}
        ranks = done.get("failedNodes") or []
        log = folder / f"node-{ranks[0] if ranks else 0}" / "log.txt"
        tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
        parts = [outcome or f"failed: the TrainJob is {final['type']} but neither successCondition nor "
                            "failureCondition holds"] + ([final["message"]] if final else [])
        return "; ".join(parts + [f"log tail of {log.parent.name}:"]) + "\n" + "\n".join(tail)

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


def _rewriter(mapping: list[tuple[str, Path]]):
    """Container paths under a mount -> the local folder that stands in for it."""
    def rewrite(s: str) -> str:
        kv = KEY_VALUE.match(s)  # a `key=/path` argument (a step's override) holds a path too
        if kv:
            return kv[1] + rewrite(kv[2])
        for cpath, local in sorted(mapping, key=lambda m: -len(m[0])):
            cpath = cpath.rstrip("/")
            if s == cpath or s.startswith(cpath + "/"):
                return str(local) + s[len(cpath):]
        return s
    return rewrite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ended(code: Any) -> str:
    if code == "running":
        return "stopped"
    if code is None:
        return "ended without an exit code"
    if code < 0:
        try:
            return f"was stopped by {signal.Signals(-code).name}"
        except ValueError:
            return f"was stopped by signal {-code}"
    return "exited 0" if code == 0 else f"exited with code {code}"


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
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


def stop(folder: Path, wait: bool = True) -> bool:
    """End a Deployment's process or a TrainJob's node processes (SIGTERM, then SIGKILL after
    STOP_GRACE_S; without `wait` only SIGTERM, and a node's wrapper reports how its command ended);
    True if one was running."""
    proc = _read(folder / "process.json") or {}
    pids = [proc["pid"]] if "pid" in proc else [n["pid"] for n in proc.get("nodes") or []]
    pids = [p for p in pids if _running(p)]
    for pid in list(pids):
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pids.remove(pid)
    if not pids or not wait:
        return bool(pids)
    end = time.monotonic() + STOP_GRACE_S
    while any(_running(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.1)
    for pid in pids:
        if _running(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
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
