"""Harvest sources `cluster` and `dump`: what is happening in a Kubernetes cluster, as documents.

    python -m steps.harvest --out runs/kb-live "sources=[cluster]" --kubeconfig ~/.kube/config
    python -m steps.harvest --out runs/kb-live "sources=[cluster]" --previous runs/kb-live-yesterday
    kubectl get nodes,events,pods,configmaps,deployments,jobs -A -o json > dump/all.json   # air-gapped
    python -m steps.harvest --out runs/kb-dump "sources=[dump]" --dump-dir dump

`cluster` lists through lightkube (credentials as in steps.detect: --kubeconfig, $KUBECONFIG,
~/.kube/config or the pod's ServiceAccount): Nodes, Events, Pods (with the last `log_lines` lines of
each container of at most `max_pods` pods that are not Running and Ready or have restarted),
ConfigMaps, Deployments, Jobs and Argo Workflows. `dump` reads the same kinds from `kubectl get -o
json` files (List or single objects) and `<namespace>_<pod>_<container>.log` files. Both go through
`object_documents`, so a dump and the live cluster give the same documents.

Secrets are never requested, and a Secret in a dump is skipped unread. Every text passes `redact`.
A kind the identity may not list (403) is skipped with a warning in the manifest, because a
namespaced ServiceAccount is commonly refused Nodes while the rest is still worth reading; a
harvest where every kind is refused, a 401, or an unreachable server fails with one message.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from steps.detect import parse_node

# kind -> topic of TOPICS. Events belong to nodes-cluster, which claims them in TOPICS. Argo
# Workflows are no Kubernetes API kind, so no reference topic claims them: "other".
KIND_TOPIC = {"Node": "nodes-cluster", "Event": "nodes-cluster", "Pod": "pods-containers",
              "ConfigMap": "configmaps-secrets", "Deployment": "deployments-replicasets", "Job": "jobs-cronjobs",
              "Workflow": "other"}
# kind -> (API group path, plural, namespaced), for messages and the RBAC hint
KIND_API = {"Node": ("/api/v1", "nodes", False), "Event": ("/api/v1", "events", True),
            "Pod": ("/api/v1", "pods", True), "ConfigMap": ("/api/v1", "configmaps", True),
            "Deployment": ("/apis/apps/v1", "deployments", True), "Job": ("/apis/batch/v1", "jobs", True),
            "Workflow": ("/apis/argoproj.io/v1alpha1", "workflows", True)}
REDACTED = "[REDACTED]"

# ---- redaction ---------------------------------------------------------------------------------

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE[ ]KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE[ ]KEY-----|\Z)", re.S)
_AWS_KEY = re.compile(r"\b(?:A[K]IA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b")
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9\-._~+/]{8,}=*", re.I)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_URL_CREDS = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://)([^/\s:@]+):([^/\s@]+)@")
# `name=value`, `name: value`, `"name": "value"`, `--name value`, where name looks like a credential;
# sensitive_name then decides, so `max_tokens=512` stays
_ASSIGN = re.compile(r"""(?P<k>-{0,2}[\w.\-]*?(?:passw(?:or)?d|pwd|secret|credential|token|key)[\w.\-]*)"""
                     r"""(?P<sep>["']?\s*[:=]\s*["']?|\s+(?=[^\s\-]))(?P<v>[^\s"',;&]+)""", re.I)
_SENSITIVE = re.compile(r"passw(or)?d|passwd|\bpwd\b|secret|credential|token(?![a-z])|api_?key|access_?key|"
                        r"private_?key|(^|[_.\-])key$", re.I)


def sensitive_name(name: str) -> bool:
    """True for keys that hold credentials: DB_PASSWORD, api-token, aws_secret_access_key, SSH_KEY,
    apiKey; not for max_tokens, tokenizer, monkey or nvidia.com/gpu."""
    plain = re.sub(r"([a-z])([A-Z])", r"\1_\2", name.lstrip("-"))  # apiKey -> api_Key
    return bool(_SENSITIVE.search(plain))


def redact(text: str) -> str:
    """`text` with credentials replaced by [REDACTED]: values of credential-like keys, bearer/basic
    tokens, JWTs, AWS access key ids, PEM private key blocks and the password of `user:pass@` URLs."""
    text = _PEM.sub(f"-----BEGIN \\1PRIVATE {'KEY'}----- {REDACTED} -----END \\1PRIVATE {'KEY'}-----", text)
    text = _URL_CREDS.sub(rf"\1\2:{REDACTED}@", text)
    text = _BEARER.sub(rf"\1 {REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    text = _AWS_KEY.sub(REDACTED, text)

    def assignment(m: re.Match) -> str:
        spaced = not any(c in m.group("sep") for c in ":=")
        if not sensitive_name(m.group("k")) or (spaced and not m.group("k").startswith("-")):
            return m.group(0)
        if m.group("v").startswith("[REDACTED"):
            return m.group(0)
        return f"{m.group('k')}{m.group('sep')}{REDACTED}"

    return _ASSIGN.sub(assignment, text)


# ---- objects to documents ----------------------------------------------------------------------

def _time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def last_change(obj: dict) -> str | None:
    """When the object last changed: an Event's last occurrence, else the latest managedFields time,
    status condition or workflow finish, else its creation (kubectl hides managedFields by default)."""
    if obj.get("kind") == "Event":
        for v in (obj.get("lastTimestamp"), (obj.get("series") or {}).get("lastObservedTime"), obj.get("eventTime")):
            if _time(v):
                return _iso(_time(v))
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    times = [_time(f.get("time")) for f in meta.get("managedFields") or []]
    times += [_time(c.get(k)) for c in status.get("conditions") or [] if isinstance(c, dict)
              for k in ("lastTransitionTime", "lastUpdateTime")]
    times += [_time(status.get("finishedAt")), _time(status.get("completionTime"))]
    found = [t for t in times if t]
    return _iso(max(found)) if found else _iso(_time(meta.get("creationTimestamp")))


def object_ref(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{ns}/{meta.get('name')}" if ns else f"{obj.get('kind')}/{meta.get('name')}"


def _conditions(status: dict) -> list[str]:
    return [f"{c.get('type')}={c.get('status')}" + (f" ({c.get('reason')}: {c.get('message')})"
                                                     if c.get("reason") or c.get("message") else "")
            for c in status.get("conditions") or []]


def _resources(res: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(res.items())) or "none"


def _containers(spec: dict) -> list[str]:
    lines = []
    for c in spec.get("containers") or []:
        r = c.get("resources") or {}
        lines.append(f"container {c.get('name')}: image {c.get('image')}; requests {_resources(r.get('requests') or {})}"
                     f"; limits {_resources(r.get('limits') or {})}")
    return lines


def node_text(obj: dict) -> str:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    node = parse_node(obj)
    lines = [f"Node {meta.get('name')}: ready {node['ready']}, schedulable {node['schedulable']}, "
             f"arch {node['arch']}, instance type {node['instance_type']}",
             f"capacity: {_resources(status.get('capacity') or {})}",
             f"allocatable: {_resources(status.get('allocatable') or {})}"]
    gpu = node["gpu"]
    if gpu:
        mem = f"{gpu['memory_bytes'] // (1 << 20)} MiB" if gpu["memory_bytes"] else "unknown memory"
        lines.append(f"GPU: {gpu['count']} x {gpu['product']} ({gpu['vendor']}, {mem}, compute capability "
                     f"{gpu['compute_capability']}, driver {gpu['cuda_driver']})")
    gpu_labels = {k: v for k, v in (meta.get("labels") or {}).items() if k.split("/")[0].endswith(("nvidia.com", "amd.com"))}
    if gpu_labels:
        lines.append("GPU labels: " + ", ".join(f"{k}={v}" for k, v in sorted(gpu_labels.items())))
    lines.append("taints: " + (", ".join(f"{t.get('key')}={t.get('value') or ''}:{t.get('effect')}"
                                         for t in spec.get("taints") or []) or "none"))
    lines.append("conditions: " + "; ".join(_conditions(status)))
    info = status.get("nodeInfo") or {}
    if info.get("kubeletVersion"):
        lines.append(f"kubelet {info.get('kubeletVersion')}, runtime {info.get('containerRuntimeVersion')}, "
                     f"OS {info.get('osImage')}")
    return "\n".join(lines)


def event_text(obj: dict) -> str:
    inv = obj.get("involvedObject") or obj.get("regarding") or {}
    about = f"{inv.get('kind')}/{inv.get('namespace')}/{inv.get('name')}" if inv.get("namespace") \
        else f"{inv.get('kind')}/{inv.get('name')}"
    source = obj.get("source") or {}
    return (f"{obj.get('type')} event {obj.get('reason')} on {about}: {obj.get('message') or obj.get('note')}\n"
            f"count {obj.get('count') or (obj.get('series') or {}).get('count') or 1}, last seen {last_change(obj)}, "
            f"first seen {obj.get('firstTimestamp')}, from {source.get('component') or obj.get('reportingComponent')}"
            + (f" on {source['host']}" if source.get("host") else ""))


def _state(state: dict) -> str:
    for name, s in (state or {}).items():
        bits = [s.get(k) for k in ("reason", "message") if s.get(k)]
        if "exitCode" in s:
            bits.append(f"exit code {s['exitCode']}")
        return name + (f" ({', '.join(str(b) for b in bits)})" if bits else "")
    return "unknown"


def needs_logs(pod: dict) -> bool:
    """A pod worth reading logs of: not Running and Ready (Succeeded pods are done), or restarted."""
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    if any((c.get("restartCount") or 0) > 0 for c in statuses):
        return True
    if status.get("phase") == "Succeeded":
        return False
    return status.get("phase") != "Running" or not all(c.get("ready") for c in statuses)


def pod_text(obj: dict, logs: dict[str, str | None]) -> str:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    lines = [f"Pod {meta.get('namespace')}/{meta.get('name')}: phase {status.get('phase')}"
             + (f" ({status.get('reason')}: {status.get('message')})" if status.get("reason") else "")
             + f", node {(obj.get('spec') or {}).get('nodeName')}"]
    lines += ["conditions: " + "; ".join(_conditions(status))]
    for c in status.get("containerStatuses") or []:
        lines.append(f"container {c.get('name')}: ready {c.get('ready')}, restarts {c.get('restartCount')}, "
                     f"state {_state(c.get('state'))}, last state {_state(c.get('lastState'))}")
    lines += _containers(obj.get("spec") or {})
    for container, log in logs.items():
        lines.append(f"--- log of container {container} (last lines) ---")
        lines.append(log.rstrip("\n") if log else "(no log read)")
    return "\n".join(lines)


def configmap_text(obj: dict, value_chars: int) -> str:
    meta = obj.get("metadata") or {}
    lines = [f"ConfigMap {meta.get('namespace')}/{meta.get('name')} with keys: "
             + ", ".join(sorted(obj.get("data") or {}) + sorted(obj.get("binaryData") or {}))]
    for key, value in sorted((obj.get("data") or {}).items()):
        value = str(value)
        if sensitive_name(key):
            value = REDACTED
        elif len(value) > value_chars:
            value = value[:value_chars] + f" ... ({len(value)} characters)"
        lines.append(f"{key}: {value}")
    for key in sorted(obj.get("binaryData") or {}):
        lines.append(f"{key}: (binary data)")
    return "\n".join(lines)


def deployment_text(obj: dict) -> str:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    lines = [f"Deployment {meta.get('namespace')}/{meta.get('name')}: replicas desired {spec.get('replicas')}, "
             f"ready {status.get('readyReplicas', 0)}, available {status.get('availableReplicas', 0)}, updated "
             f"{status.get('updatedReplicas', 0)}, unavailable {status.get('unavailableReplicas', 0)}",
             f"strategy {(spec.get('strategy') or {}).get('type')}",
             "conditions: " + "; ".join(_conditions(status))]
    return "\n".join(lines + _containers(((spec.get("template") or {}).get("spec")) or {}))


def job_text(obj: dict) -> str:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    lines = [f"Job {meta.get('namespace')}/{meta.get('name')}: completions {spec.get('completions')}, parallelism "
             f"{spec.get('parallelism')}, backoffLimit {spec.get('backoffLimit')}; active {status.get('active', 0)}, "
             f"succeeded {status.get('succeeded', 0)}, failed {status.get('failed', 0)}",
             f"started {status.get('startTime')}, completed {status.get('completionTime')}",
             "conditions: " + "; ".join(_conditions(status))]
    return "\n".join(lines + _containers(((spec.get("template") or {}).get("spec")) or {}))


def workflow_text(obj: dict) -> str:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    lines = [f"Argo Workflow {meta.get('namespace')}/{meta.get('name')}: phase {status.get('phase')}"
             + (f", message: {status.get('message')}" if status.get("message") else ""),
             f"started {status.get('startedAt')}, finished {status.get('finishedAt')}, progress {status.get('progress')}"]
    failed = [n for n in (status.get("nodes") or {}).values() if n.get("phase") in ("Failed", "Error")]
    for n in sorted(failed, key=lambda n: str(n.get("startedAt"))):
        lines.append(f"failed node {n.get('displayName')} ({n.get('type')}, template {n.get('templateName')}): "
                     f"{n.get('phase')}: {n.get('message')}")
    return "\n".join(lines)


def _doc(obj: dict, kind: str, text: str, source: str, doc_type: str, **extra) -> dict:
    api_version = str(obj.get("apiVersion") or "v1")
    group, _, version = api_version.rpartition("/")
    ref = object_ref({**obj, "kind": kind})
    meta = obj.get("metadata") or {}
    return dict(id=f"cluster/{ref}", source=source, doc_type=doc_type, topic=KIND_TOPIC[kind],
                api_group=group or "core", version=version, kind=kind, **{"class": None}, field=None, type=None,
                title=f"{kind} {meta.get('namespace') + '/' if meta.get('namespace') else ''}{meta.get('name')}",
                paths=[], text=redact(text), object=ref, namespace=meta.get("namespace"),
                timestamp=last_change({**obj, "kind": kind}), **extra)


def object_documents(objects: Iterable[dict], logs: dict[tuple[str, str], dict[str, str | None]], source: str,
                     value_chars: int = 200) -> tuple[list[dict], dict[str, int]]:
    """One document per object of the known kinds; Pods only when needs_logs (or logs were found
    for them), with their containers' log tails from `logs[(namespace, pod)]`. Secrets and other
    kinds are skipped unread."""
    docs, stats = [], {"objects": 0, "skipped_secrets": 0, "skipped_other_kinds": 0}
    seen_pods = set()
    for obj in objects:
        kind = obj.get("kind")
        if kind == "Secret":
            stats["skipped_secrets"] += 1
            continue
        if kind not in KIND_TOPIC:
            stats["skipped_other_kinds"] += 1
            continue
        stats["objects"] += 1
        if kind == "Node":
            docs.append(_doc(obj, kind, node_text(obj), source, "node"))
        elif kind == "Event":
            inv = obj.get("involvedObject") or obj.get("regarding") or {}
            about = object_ref({"kind": inv.get("kind"), "metadata": inv})
            title = f"{obj.get('type')} {obj.get('reason')}: {about}"
            doc = _doc(obj, kind, event_text(obj), source, "event", about=about)
            docs.append({**doc, "title": title})
        elif kind == "Pod":
            meta = obj.get("metadata") or {}
            key = (meta.get("namespace"), meta.get("name"))
            if key in logs or needs_logs(obj):
                seen_pods.add(key)
                names = [c.get("name") for c in (obj.get("spec") or {}).get("containers") or []]
                found = {**{n: None for n in names}, **logs.get(key, {})}
                docs.append(_doc(obj, kind, pod_text(obj, found), source, "pod"))
        elif kind == "ConfigMap":
            docs.append(_doc(obj, kind, configmap_text(obj, value_chars), source, "configmap"))
        elif kind == "Deployment":
            docs.append(_doc(obj, kind, deployment_text(obj), source, "deployment"))
        elif kind == "Job":
            docs.append(_doc(obj, kind, job_text(obj), source, "job"))
        elif kind == "Workflow":
            docs.append(_doc(obj, kind, workflow_text(obj), source, "workflow"))
    for (ns, pod), by_container in sorted(logs.items()):  # logs of pods the dump has no object for
        if (ns, pod) not in seen_pods:
            bare = {"kind": "Pod", "apiVersion": "v1", "metadata": {"namespace": ns, "name": pod}}
            text = "\n".join(f"--- log of container {c} (last lines) ---\n{(log or '').rstrip()}"
                             for c, log in by_container.items())
            docs.append(_doc(bare, "Pod", f"Pod {ns}/{pod} (no Pod object in the dump)\n{text}", source, "pod"))
    return docs, stats


# ---- the dump source ---------------------------------------------------------------------------

def _items(data: Any, path: Path) -> list[dict]:
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a Kubernetes object or List (top level is {type(data).__name__}); "
                         "write it with `kubectl get KIND -o json`")
    if "items" in data:
        # kubectl sets each item's kind; a raw API list names it only in its own kind (PodList)
        item_kind = str(data.get("kind") or "").removesuffix("List") or None
        return [{"kind": item_kind, "apiVersion": data.get("apiVersion"), **i} for i in data["items"] or []]
    return [data]


def parse_log_name(name: str) -> tuple[str, str, str | None]:
    """`<namespace>_<pod>_<container>.log` or `<namespace>_<pod>.log` -> (namespace, pod, container).
    Kubernetes names have no underscores, so the split is unambiguous."""
    parts = name.removesuffix(".log").split("_")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return parts[0], parts[1], None
    raise ValueError(f"log file {name} is not named <namespace>_<pod>_<container>.log: rename it, e.g. "
                     f"`kubectl logs -n NS POD -c C --tail 200 > NS_POD_C.log`")


def tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


def dump_documents(dump_dir: Path, log_lines: int = 50, max_pods: int = 20,
                   value_chars: int = 200) -> tuple[list[dict], dict[str, Any]]:
    dump_dir = Path(dump_dir)
    if not dump_dir.is_dir():
        raise FileNotFoundError(f"dump_dir {dump_dir} {'is not a folder' if dump_dir.exists() else 'does not exist'}"
                                "; set dump_dir to a folder of `kubectl get ... -o json` files and *.log files")
    objects: list[dict] = []
    files = sorted(p for p in dump_dir.rglob("*.json") if p.is_file())
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not JSON ({e}); write it with `kubectl get KIND -A -o json > FILE`") from None
        objects += _items(data, path)
    logs: dict[tuple[str, str], dict[str, str | None]] = {}
    log_files = sorted(p for p in dump_dir.rglob("*.log") if p.is_file())
    for path in log_files:
        ns, pod, container = parse_log_name(path.name)
        if len(logs) >= max_pods and (ns, pod) not in logs:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        logs.setdefault((ns, pod), {})[container or "(default)"] = tail(text, log_lines)
    if not files and not log_files:
        raise FileNotFoundError(f"dump_dir {dump_dir} holds no *.json or *.log files; see `python -m steps.harvest "
                                "--help` for the kubectl commands that write them")
    docs, stats = object_documents(objects, logs, "dump", value_chars)
    return docs, {"dump_dir": str(dump_dir.resolve()), "json_files": len(files), "log_files": len(log_files), **stats}


# ---- the live cluster --------------------------------------------------------------------------

def _resource(kind: str):
    from lightkube.generic_resource import create_namespaced_resource
    from lightkube.resources.apps_v1 import Deployment
    from lightkube.resources.batch_v1 import Job
    from lightkube.resources.core_v1 import ConfigMap, Event, Node, Pod

    if kind == "Workflow":
        return create_namespaced_resource("argoproj.io", "v1alpha1", "Workflow", "workflows")
    return {"Node": Node, "Event": Event, "Pod": Pod, "ConfigMap": ConfigMap, "Deployment": Deployment,
            "Job": Job}[kind]


def cluster_documents(kubeconfig: str | None = None, context: str | None = None, namespaces: list[str] | None = None,
                      log_lines: int = 50, max_pods: int = 20, value_chars: int = 200, chunk_size: int = 200,
                      timeout_s: float = 10.0) -> tuple[list[dict], dict[str, Any]]:
    """Documents of the live cluster. Errors are one ValueError naming the server and the fix."""
    try:
        import httpx2
        from lightkube import ApiError, Client, ConfigError
    except ImportError as e:
        raise ValueError(f"harvesting a cluster needs lightkube ({e}): pip install 'kubellm[cluster]'") from None
    # the kubeconfig loading and the refusal messages of `kubellm detect`, so both read alike
    from steps.detect import api_error, kube_config

    single, where = kube_config(kubeconfig, context)
    server, ctx = single.cluster.server, single.context_name
    namespaces = [n for n in namespaces or ["all"] if n != "all"] or ["*"]
    try:
        client = Client(single, timeout=httpx2.Timeout(timeout_s))
    except ConfigError as e:
        raise ValueError(f"cannot use context {ctx!r} from {where}: {e}") from None

    def refused(e: Exception, what: str) -> str | None:
        """A warning for a refusal that only costs this kind; None when the whole harvest must stop."""
        code = e.response.status_code if isinstance(e, httpx2.HTTPStatusError) else None
        message = getattr(getattr(e, "status", None), "message", None) or (
            e.response.reason_phrase if code else str(e))
        if code == 403:
            return (f"{what}: 403 Forbidden ({message}); skipped. Grant get/list on it to this identity "
                    "(docs/rag.md, 'Harvest the live cluster', has the ClusterRole)")
        if code == 404 and "argoproj.io" in what:
            return f"{what}: 404 Not Found; skipped: Argo Workflows (its CRD) is not installed in this cluster"
        return None

    objects: list[dict] = []
    logs: dict[tuple[str, str], dict[str, str | None]] = {}
    warnings: list[str] = []
    listed: dict[str, int] = {}
    try:
        for kind, (prefix, plural, namespaced) in KIND_API.items():
            res, got = _resource(kind), []
            try:
                for ns in namespaces if namespaced else [None]:
                    got += [o.to_dict() for o in client.list(res, namespace=ns, chunk_size=chunk_size)]
            except httpx2.HTTPStatusError as e:
                warning = refused(e, f"list {plural} ({prefix}/{plural})")
                if warning is None and e.response.status_code not in (401,):
                    raise ValueError(f"the Kubernetes API server {server} (context {ctx!r} from {where}) answered "
                                     f"{e.response.status_code} to GET {e.request.url.path}: "
                                     f"{getattr(getattr(e, 'status', None), 'message', None) or e.response.reason_phrase}"
                                     ) from None
                if warning is None:
                    raise
                warnings.append(warning)
                continue
            for o in got:
                o.setdefault("kind", kind)
            listed[kind] = len(got)
            objects += got
        pods = sorted((o for o in objects if o.get("kind") == "Pod" and needs_logs(o)),
                      key=lambda o: last_change(o) or "", reverse=True)[:max_pods]
        for pod in pods if log_lines > 0 else []:
            meta = pod.get("metadata") or {}
            for c in (pod.get("spec") or {}).get("containers") or []:
                try:
                    text = "".join(client.log(meta["name"], namespace=meta["namespace"], container=c["name"],
                                              tail_lines=log_lines))
                except ApiError as e:
                    warning = refused(e, "read pods/log")
                    if warning:
                        if warning not in warnings:
                            warnings.append(warning)
                        text = None
                    elif e.response.status_code in (400, 404):  # not started yet, or gone
                        text = None
                    else:
                        raise
                logs.setdefault((meta["namespace"], meta["name"]), {})[c["name"]] = \
                    tail(text, log_lines) if text else None
    except httpx2.HTTPError as e:
        raise api_error(e, server, where, ctx) from None
    except KeyError as e:
        # lightkube reads the Content-Type of an error answer; a proxy's plain answer may have none
        if isinstance(e.__context__, httpx2.HTTPStatusError):
            raise api_error(e.__context__, server, where, ctx) from None
        raise
    except ConfigError as e:
        raise ValueError(f"cannot get credentials for context {ctx!r} from {where}: {e}") from None
    finally:
        client.close()
    if not listed:
        raise ValueError(f"the Kubernetes API server {server} (context {ctx!r} from {where}) refused every kind: "
                         + "; ".join(warnings))
    # keep only the selected pods: the rest are Running and Ready and carry nothing to explain
    chosen = set(logs) | {((p.get("metadata") or {}).get("namespace"), (p.get("metadata") or {}).get("name"))
                          for p in pods}
    objects = [o for o in objects if o.get("kind") != "Pod"
               or ((o.get("metadata") or {}).get("namespace"), (o.get("metadata") or {}).get("name")) in chosen]
    docs, stats = object_documents(objects, logs, "cluster", value_chars)
    return docs, {"server": server, "context": ctx, "config": where, "namespaces": namespaces, "listed": listed,
                  "pods_with_logs": len(logs), "warnings": warnings, **stats}


# ---- Prometheus --------------------------------------------------------------------------------

def prometheus_documents(url: str, queries: dict[str, str], timeout_s: float = 10.0,
                         max_series: int = 50) -> tuple[list[dict], dict[str, Any]]:
    """One document per named PromQL query (an instant query, GET /api/v1/query)."""
    import httpx

    docs = []
    base = url.rstrip("/")
    with httpx.Client(timeout=timeout_s, trust_env=False) as client:
        for name, query in sorted(queries.items()):
            try:
                r = client.get(f"{base}/api/v1/query", params={"query": query})
                body = r.json()
            except httpx.HTTPError as e:
                raise ValueError(f"cannot reach Prometheus at {base} ({e or type(e).__name__}): check "
                                 "prometheus_url (e.g. http://prometheus-operated.monitoring:9090)") from None
            except ValueError:
                raise ValueError(f"Prometheus at {base} answered {r.status_code} without JSON to query {name!r}: is "
                                 "prometheus_url the Prometheus server (not Grafana)?") from None
            if body.get("status") != "success":
                raise ValueError(f"Prometheus at {base} refused query {name!r} ({query}): {body.get('errorType')}: "
                                 f"{body.get('error')}; fix prometheus_queries.{name}")
            data = body.get("data") or {}
            result = data.get("result") or []
            if data.get("resultType") in ("scalar", "string"):
                result = [{"metric": {}, "value": result}]
            lines, stamps = [f"Prometheus query {name}: {query}"], []
            for s in result[:max_series]:
                ts, value = (s.get("value") or [None, None])[:2]
                labels = ",".join(f'{k}="{v}"' for k, v in sorted((s.get("metric") or {}).items()))
                lines.append(f"{{{labels}}} = {value}")
                stamps.append(ts)
            if len(result) > max_series:
                lines.append(f"... {len(result) - max_series} more series")
            if not result:
                lines.append("(no series)")
            ts = max((float(t) for t in stamps if t is not None), default=None)
            docs.append(dict(id=f"prometheus/{name}", source="prometheus", doc_type="metric", topic="other",
                             api_group=None, version=None, kind=None, **{"class": None}, field=None, type=None,
                             title=f"metric {name}", paths=[], text=redact("\n".join(lines)), object=None,
                             namespace=None,
                             timestamp=_iso(datetime.fromtimestamp(ts, timezone.utc)) if ts is not None else None))
    return docs, {"url": base, "queries": len(queries)}


# ---- incremental harvests ----------------------------------------------------------------------

def content_hash(doc: dict) -> str:
    """What an embedding depends on: the title and the text."""
    return hashlib.sha256(f"{doc['title']}\n\n{doc['text']}".encode()).hexdigest()


def compare_previous(docs: list[dict], previous: Path) -> tuple[list[dict], dict[str, Any], dict[str, list[str]]]:
    """Carry the previous harvest's line over for every document whose content hash is unchanged,
    so an index step can keep its embedding; count new, changed, unchanged and removed ids."""
    path = Path(previous) / "docs.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"previous={previous} holds no docs.jsonl: give the output folder of an earlier "
                                "harvest, or drop --previous for a full harvest")
    old: dict[str, dict] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n} is not JSON ({e.msg}); harvest again without --previous") from None
            old[d["id"]] = d
    changes: dict[str, list[str]] = {"new": [], "changed": [], "unchanged": [], "removed": []}
    out = []
    for d in docs:
        prev = old.get(d["id"])
        if prev is None:
            changes["new"].append(d["id"])
            out.append(d)
        elif prev.get("content_hash") == d["content_hash"]:
            changes["unchanged"].append(d["id"])
            out.append(prev)
        else:
            changes["changed"].append(d["id"])
            out.append(d)
    ids = {d["id"] for d in docs}
    changes["removed"] = sorted(i for i in old if i not in ids)
    counts = {k: len(v) for k, v in changes.items()}
    return out, {"previous": str(Path(previous).resolve()), **counts}, changes
