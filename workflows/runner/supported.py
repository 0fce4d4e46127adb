"""What the local runner supports: every field is checked before the first node starts.

A field this runner cannot honour the same way as Argo is refused with its exact path; fields that only
matter to a cluster are listed in CLUSTER_ONLY and ignored (docs/runner.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from workflows.refs import TEMPLATE_KINDS, Template, Use, WorkflowRefs
from workflows.runner.errors import TaskError, WorkflowError
from workflows.runner.expressions import seconds

from workflows.argo.rules import argo_problems

# What the runner understands. kind -> {field: kind of its value, or None for a plain value}.
# "[kind]" is a list of kind, "*" is anything (read as a whole, or not at all).

SUPPORTED: dict[str, dict[str, str | None]] = {
    "workflow": {"apiVersion": None, "kind": None, "spec": "spec"},
    "spec": {"entrypoint": None, "arguments": "wf-arguments", "templates": "[template]",
             "volumes": "[volume]", "volumeClaimTemplates": "[claim]", "parallelism": None,
             "synchronization": "sync"},
    "wf-arguments": {"parameters": "[wf-parameter]"},
    "wf-parameter": {"name": None, "value": None, "default": None, "enum": None, "description": None},
    "template": {"name": None, "container": "container", "dag": "dag", "inputs": "inputs",
                 "outputs": "outputs", "retryStrategy": "retry", "activeDeadlineSeconds": None,
                 "timeout": None, "daemon": None, "synchronization": "sync", "volumes": "[volume]",
                 "parallelism": None, "podSpecPatch": None, "resource": "resource"},
    # a resource template acts on the local cluster (localcluster.py)
    "resource": {"action": None, "manifest": None, "mergeStrategy": None, "successCondition": None,
                 "failureCondition": None, "setOwnerReference": None},
    "container": {"command": None, "args": None, "env": "[env]", "workingDir": None,
                  "volumeMounts": "[mount]", "readinessProbe": "probe"},
    "env": {"name": None, "value": None, "valueFrom": "env-source"},
    "env-source": {"secretKeyRef": "*"},
    "mount": {"name": None, "mountPath": None, "subPath": None, "readOnly": None},
    "probe": {"httpGet": "http-get", "initialDelaySeconds": None, "periodSeconds": None,
              "failureThreshold": None, "timeoutSeconds": None, "successThreshold": None},
    "http-get": {"path": None, "port": None, "scheme": None, "host": None, "httpHeaders": None},
    "inputs": {"parameters": "[in-parameter]", "artifacts": "[in-artifact]"},
    "in-parameter": {"name": None, "value": None, "default": None, "enum": None, "description": None},
    "in-artifact": {"name": None, "path": None, "optional": None, "raw": "raw", "s3": "s3-key"},
    "s3-key": {"key": None},  # a key-only artifact: the workflow's default repository, locally <out>/s3/
    "raw": {"data": None},
    "outputs": {"parameters": "[out-parameter]", "artifacts": "[out-artifact]"},
    "out-parameter": {"name": None, "valueFrom": "out-value-from"},
    "out-value-from": {"path": None, "default": None, "parameter": None},
    "out-artifact": {"name": None, "path": None, "optional": None, "from": None, "s3": "s3-key"},
    "dag": {"tasks": "[task]", "failFast": None},
    "task": {"name": None, "template": None, "arguments": "task-arguments", "depends": None,
             "dependencies": None, "when": None, "withItems": None, "withParam": None},
    "task-arguments": {"parameters": "[task-parameter]", "artifacts": "[task-artifact]"},
    "task-parameter": {"name": None, "value": None, "description": None},
    "task-artifact": {"name": None, "from": None, "raw": "raw", "optional": None},
    "retry": {"limit": None, "retryPolicy": None, "backoff": "backoff"},
    "backoff": {"duration": None, "factor": None, "maxDuration": None, "cap": None},
    "sync": {"semaphores": "[semaphore]", "mutexes": "[mutex]"},
    "semaphore": {"configMapKeyRef": "config-map-key", "namespace": None},
    "config-map-key": {"name": None, "key": None, "optional": None},
    "mutex": {"name": None, "namespace": None},
    "volume": {"name": None, "emptyDir": "*", "persistentVolumeClaim": "*"},
    "claim": {"metadata": "*", "spec": "*"},
}

# Accepted and ignored: they decide where and how a pod runs on a cluster, not what it computes.
# Fields that change what runs (script, steps, initContainers, sidecars, onExit, hooks, templateDefaults,
# envFrom, artifacts in another repository than the default one (s3 bucket/endpoint, http, git), a
# podSpecPatch that does more than place the pod or size its containers, ...) are NOT here: they fail.
CLUSTER_ONLY: tuple[str, ...] = (
    "workflow.metadata",
    "spec.serviceAccountName", "spec.automountServiceAccountToken", "spec.executor",
    "spec.nodeSelector", "spec.tolerations", "spec.affinity", "spec.priorityClassName",
    "spec.podPriorityClassName", "spec.schedulerName", "spec.securityContext",
    "spec.imagePullSecrets", "spec.hostAliases", "spec.dnsPolicy", "spec.dnsConfig",
    "spec.podMetadata", "spec.workflowMetadata", "spec.podDisruptionBudget",
    "spec.activeDeadlineSeconds", "spec.podGC", "spec.ttlStrategy", "spec.volumeClaimGC",
    "spec.artifactGC", "spec.artifactRepositoryRef", "spec.archiveLogs", "spec.metrics",
    "template.metadata", "template.nodeSelector", "template.tolerations", "template.affinity",
    "template.priorityClassName", "template.schedulerName", "template.serviceAccountName",
    "template.automountServiceAccountToken", "template.securityContext", "template.hostAliases",
    "template.executor", "template.metrics", "template.memoize", "template.archiveLocation",
    "container.image", "container.name", "container.imagePullPolicy", "container.resources",
    "container.securityContext", "container.ports", "container.livenessProbe",
    "container.startupProbe", "container.terminationMessagePath",
    "container.terminationMessagePolicy",
    "mount.mountPropagation",
    "out-artifact.gcs", "out-artifact.azure", "out-artifact.oss",
    "out-artifact.hdfs", "out-artifact.artifactory", "out-artifact.archive",
    "out-artifact.artifactGC", "out-artifact.globalName", "out-artifact.mode",
    "out-artifact.recurseMode", "out-artifact.deleted",
    "out-parameter.globalName", "out-parameter.description",
    "in-artifact.mode", "in-artifact.recurseMode",
    "retry.affinity",
)

# podSpecPatch keys that only decide where a pod runs: accepted and ignored locally
PLACEMENT_PATCH_KEYS = frozenset({"nodeSelector", "tolerations", "affinity", "priorityClassName", "schedulerName",
                                  "topologySpreadConstraints"})
# Argo's own containers of a pod. A podSpecPatch may set their resources (`containers: [{name: main,
# resources: ...}]`) and that is where a templated quantity goes: Argo decodes `resources` before it
# substitutes {{...}}, a patch after. Ignored locally, like placement.
PATCHED_CONTAINERS = ("main", "wait")
RETRY_POLICIES = ("Always", "OnFailure", "OnError", "OnTransientError")


def preflight(doc: dict, volumes: dict[str, Path]) -> None:
    """Refuse, before any node runs, a workflow that Argo would refuse or that cannot run here."""
    refused = argo_problems(doc) if isinstance(doc, dict) else []
    local = check_supported(doc, volumes)
    parts = []
    if refused:
        # the same rules as `kubellm lint`: a run here must not succeed with a workflow a cluster rejects
        parts.append("Argo would refuse this workflow (argo lint, argo submit):\n  " + "\n  ".join(refused))
    if local:
        parts.append("this workflow cannot run locally:\n  " + "\n  ".join(local))
    if parts:
        raise WorkflowError("\n".join(parts))


def check_supported(doc: dict, volumes: dict[str, Path] | None = None) -> list[str]:
    """Problems that stop this workflow from running locally (empty list: it can run)."""
    problems: list[str] = []
    if not isinstance(doc, dict) or doc.get("kind") != "Workflow":
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        return [f"kind: expected Workflow, got {kind!r} (render it with `kubellm compile`)"]
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return ["spec: missing"]
    volumes = volumes or {}
    _check_fields(doc, "workflow", "", problems, volumes)

    wf = WorkflowRefs(spec)
    names = [t.name for t in wf.templates]
    for i, t in enumerate(wf.templates):
        if not t.name:
            problems.append(f"{t.path}.name: missing")
        elif names.index(t.name) != i:
            problems.append(f"{t.path}.name: template '{t.name}' is defined twice")
    entry = spec.get("entrypoint")
    if not entry:
        problems.append("spec.entrypoint: missing")
    elif entry not in names:
        problems.append(f"spec.entrypoint: no template named '{entry}' (templates are {', '.join(map(str, names))})")

    declared_volumes = {v.get("name") for v in spec.get("volumes") or []}
    declared_volumes |= {(c.get("metadata") or {}).get("name") for c in spec.get("volumeClaimTemplates") or []}
    for name in volumes:
        if name not in declared_volumes:
            problems.append(f"volumes: '{name}' is not a volume of this workflow (volumes are {', '.join(sorted(map(str, declared_volumes))) or 'none'})")
    for t in wf.templates:
        problems += _check_template(t, declared_volumes)
        if t.is_dag:
            problems += wf.graph(t)[2]
            for task in wf.tasks(t):
                if wf.template_of(task) is None:
                    problems.append(f"{task.path}.template: no template named '{task.body.get('template')}' (templates are {', '.join(map(str, names))})")
                if "withItems" in task.body and "withParam" in task.body:
                    problems.append(f"{task.path}: use either withItems or withParam, not both")
                if "withItems" in task.body and not isinstance(task.body["withItems"], list):
                    problems.append(f"{task.path}.withItems: must be a list")
    problems += _check_variables(wf)
    return problems


def _check_template(template: Template, declared_volumes: set) -> list[str]:
    """What one template asks of the runner, apart from its fields (_check_fields) and variables."""
    problems: list[str] = []
    t, tp = template.body, template.path
    is_c, is_d = "container" in t, "dag" in t
    kinds = [k for k in t if k in TEMPLATE_KINDS and k not in ("container", "dag")]
    if is_c == is_d and not kinds:
        problems.append(f"{tp}: needs exactly one of container or dag")
    if "resource" in t:
        problems += _check_resource(t, tp)
    if is_c:
        problems += _check_container(t, tp)
        known_volumes = declared_volumes | {v.get("name") for v in t.get("volumes") or []}
        for j, m in enumerate((t.get("container") or {}).get("volumeMounts") or []):
            if m.get("name") not in known_volumes:
                problems.append(f"{tp}.container.volumeMounts[{j}].name: no volume '{m.get('name')}' "
                                f"(volumes are {', '.join(sorted(map(str, known_volumes))) or 'none'})")
    for key in ("daemon", "retryStrategy", "synchronization", "activeDeadlineSeconds", "timeout", "volumes",
                "podSpecPatch"):
        if is_d and key in t:
            problems.append(f"{tp}.{key}: not supported on a DAG template by the local runner (set it on the container templates)")
    outputs = t.get("outputs") or {}
    for j, p in enumerate(outputs.get("parameters") or []):
        vf = p.get("valueFrom") or {}
        if is_c and "path" not in vf:
            problems.append(f"{tp}.outputs.parameters[{j}].valueFrom.path: required for a container output parameter")
        if is_d and "parameter" not in vf:
            problems.append(f"{tp}.outputs.parameters[{j}].valueFrom.parameter: required for a DAG output parameter")
    for j, a in enumerate(outputs.get("artifacts") or []):
        if is_c and "path" not in a:
            problems.append(f"{tp}.outputs.artifacts[{j}].path: required")
        if is_d and "from" not in a:
            problems.append(f"{tp}.outputs.artifacts[{j}].from: required for a DAG output artifact")
        if is_d and "s3" in a:
            problems.append(f"{tp}.outputs.artifacts[{j}].s3: not supported on a DAG output artifact by the "
                            "local runner (set the key on the container template that writes it)")
        elif isinstance(a.get("s3"), dict) and a["s3"].get("key") in (None, ""):
            problems.append(f"{tp}.outputs.artifacts[{j}].s3.key: required locally (s3 without a key names no place)")
    for j, a in enumerate((t.get("inputs") or {}).get("artifacts") or []):
        if is_c and "path" not in a:
            problems.append(f"{tp}.inputs.artifacts[{j}].path: required")
        if isinstance(a.get("s3"), dict) and a["s3"].get("key") in (None, ""):
            problems.append(f"{tp}.inputs.artifacts[{j}].s3.key: required locally (s3 without a key names no place)")
    rs = t.get("retryStrategy") or {}
    if rs.get("retryPolicy") and rs["retryPolicy"] not in RETRY_POLICIES:
        problems.append(f"{tp}.retryStrategy.retryPolicy: {rs['retryPolicy']!r} is not one of {', '.join(RETRY_POLICIES)}")
    for key in ("duration", "maxDuration", "cap"):
        if key in (rs.get("backoff") or {}) and "{{" not in str(rs["backoff"][key]):
            try:
                seconds(rs["backoff"][key], f"{tp}.retryStrategy.backoff.{key}")
            except WorkflowError as e:
                problems.append(str(e))
    for j, s in enumerate((t.get("synchronization") or {}).get("semaphores") or []):
        ref = s.get("configMapKeyRef") or {}
        if not ref.get("name") or not ref.get("key"):
            problems.append(f"{tp}.synchronization.semaphores[{j}].configMapKeyRef: needs name and key")
    return problems


def _check_fields(value: Any, kind: str, path: str, problems: list[str], volumes: dict) -> None:
    if kind == "*":
        return
    if kind.startswith("["):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list")
            return
        for i, v in enumerate(value):
            _check_fields(v, kind[1:-1], f"{path}[{i}]", problems, volumes)
        return
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a mapping")
        return
    allowed = SUPPORTED[kind]
    for key, v in value.items():
        sub = f"{path}.{key}" if path else key
        if key in allowed:
            if allowed[key] is not None:
                _check_fields(v, allowed[key], sub, problems, volumes)
        elif kind == "volume" and value.get("name") in volumes:
            pass  # any volume source is fine once the caller maps it to a local folder
        elif kind == "volume" and isinstance(v, dict):
            problems.append(f"{sub}: a {key} volume has no local equivalent; map it to a folder "
                            f"(run_workflow(..., volumes={{'{value.get('name')}': path}})) or declare it as an emptyDir "
                            "or persistentVolumeClaim volume, which the local runner keeps in the run folder")
        elif kind == "s3-key":
            problems.append(f"{sub}: not supported by the local runner (supported: key): only key-only artifacts "
                            "in the workflow's default artifact repository run locally, as <out>/s3/<key>; "
                            f"{key} names another repository")
        elif f"{kind}.{key}" not in CLUSTER_ONLY:
            problems.append(f"{sub}: not supported by the local runner (supported: {', '.join(sorted(allowed))})")


def _check_resource(t: dict, tp: str) -> list[str]:
    from workflows.argo import conditions
    from workflows.runner.localcluster import ACTIONS, KINDS, MERGE_STRATEGIES

    problems = []
    r = t.get("resource") or {}
    # the object, when its manifest reads as YAML before substitution (else the run reads it after)
    try:
        obj = yaml.safe_load(r.get("manifest") or "")
    except yaml.YAMLError:
        obj = None
    kind = (obj.get("apiVersion"), obj.get("kind")) if isinstance(obj, dict) else (None, None)
    if all(isinstance(k, str) and "{{" not in k for k in kind) and kind not in KINDS:
        problems.append(f"{tp}.resource.manifest: {kind[0]} {kind[1]} cannot run locally (the local cluster emulates "
                        f"{', '.join(f'{v} {k}' for v, k in KINDS)}; docs/runner.md)")
    if kind[1] == "TrainJob" and kind in KINDS:
        from workflows.trainjob import validate_trainjob

        problems += [f"{tp}.resource.manifest: {p}" for p in validate_trainjob(obj)]
    if r.get("setOwnerReference") and kind[1] != "TrainJob":
        problems.append(f"{tp}.resource.setOwnerReference: not supported by the local runner for a {kind[1] or 'manifest'} "
                        "(objects of the local cluster outlive the run; only a TrainJob's nodes end with it)")
    if r.get("action") not in ACTIONS:
        problems.append(f"{tp}.resource.action: {r.get('action')!r} is not supported by the local runner "
                        f"(supported: {', '.join(ACTIONS)})")
    if r.get("mergeStrategy") not in (None, "", *MERGE_STRATEGIES):
        problems.append(f"{tp}.resource.mergeStrategy: {r['mergeStrategy']!r} is not supported by the local runner "
                        f"(supported: {', '.join(MERGE_STRATEGIES)})")
    if not r.get("manifest"):
        problems.append(f"{tp}.resource.manifest: required locally")
    for key in ("successCondition", "failureCondition"):
        text = str(r.get(key) or "")
        if text and "{{" not in text:
            try:
                conditions.parse(text)
            except ValueError as e:
                problems.append(f"{tp}.resource.{key}: {e}")
    outputs = t.get("outputs") or {}
    if outputs.get("parameters") or outputs.get("artifacts"):
        problems.append(f"{tp}.outputs: a resource template's outputs are not supported by the local runner")
    return problems


def _check_container(t: dict, tp: str) -> list[str]:
    problems = []
    c = t.get("container") or {}
    if not c.get("command"):
        problems.append(f"{tp}.container.command: required locally (the image's entrypoint is not known here)")
    probe = c.get("readinessProbe")
    if probe is not None:
        get = probe.get("httpGet")
        if not get:
            problems.append(f"{tp}.container.readinessProbe: only httpGet probes are supported locally")
        elif not re.fullmatch(r"\d+|\{\{.*\}\}", str(get.get("port", ""))):
            problems.append(f"{tp}.container.readinessProbe.httpGet.port: must be a port number, got {get.get('port')!r}")
    for j, e in enumerate(c.get("env") or []):
        if "valueFrom" in e and "secretKeyRef" not in (e.get("valueFrom") or {}):
            problems.append(f"{tp}.container.env[{j}].valueFrom: only secretKeyRef is supported locally")
    return problems


# a container template's fields the runner never substitutes: cluster-only ones, and names
_NOT_SUBSTITUTED = frozenset(k.split(".", 1)[1] for k in CLUSTER_ONLY if k.startswith(("template.", "container."))) | {"name"}


def _check_variables(wf: WorkflowRefs) -> list[str]:
    """Every {{...}} the runner will substitute must have a value where it is used."""
    problems: list[str] = []
    workflow_vars = {"workflow.name", "workflow.uid"} | {f"workflow.parameters.{p}" for p in wf.parameters}
    scopes: dict[int, set[str]] = {}

    def known_in(t: Template | None) -> set[str]:
        if t is None:  # spec.arguments
            return {"workflow.name"}
        if t.index not in scopes:
            known = workflow_vars | {f"inputs.parameters.{p}" for p in t.inputs("parameters")}
            if t.is_dag:
                known |= {f"inputs.artifacts.{a}" for a in t.inputs("artifacts")}
            else:
                known |= {"pod.name", "retries"} | {f"inputs.artifacts.{a}.path" for a in t.inputs("artifacts")}
                known |= {f"outputs.{kind}.{o}.path" for kind in ("artifacts", "parameters") for o in t.outputs(kind)}
            scopes[t.index] = known
        return scopes[t.index]

    for use in wf.uses(skip=_NOT_SUBSTITUTED):
        if use.template is not None and not use.in_dag_scope and not ({"container", "resource"} & set(use.template.body)):
            continue  # a script, steps, ... template is refused as a field
        if use.is_expression:
            problems.append(f"{use.path}: expression template '{use.tag}' is not supported by the local runner")
            continue
        known = known_in(use.template)
        if use.name in known:
            continue
        reason = _dag_reference(wf, use) if use.in_dag_scope else None
        if reason == "":
            continue
        if reason:
            problems.append(f"{use.path}: '{use.tag}' {reason}")
        else:
            shown = ", ".join("{{" + k + "}}" for k in sorted(known)[:12])
            more = " and {{tasks.<dependency>.outputs...}}" if use.in_dag_scope else ""
            problems.append(f"{use.path}: unknown variable '{use.tag}' (known here: {shown or 'none'}{more})")
    return problems


def _dag_reference(wf: WorkflowRefs, use: Use) -> str | None:
    """In a DAG: why a {{tasks.X...}} or {{item}} has no value; "" when it has one; None: neither kind."""
    if use.task is not None and use.task.has_item and (use.name == "item" or re.fullmatch(r"item\.[^.]+", use.name)):
        return ""
    m = re.fullmatch(r"tasks\.([^.]+)\.(ip|outputs\.(parameters|artifacts)\.[^.]+)", use.name)
    if not m:
        return None
    task_names = [x.name for x in wf.tasks(use.template)]
    if m.group(1) not in task_names:
        return f"refers to no task of this DAG (tasks are {', '.join(map(str, task_names))})"
    if use.task is not None and m.group(1) not in use.task.ancestors:
        return f"refers to task '{m.group(1)}', which this task does not depend on (add it to depends)"
    return ""


def check_pod_spec_patch(text: str, where: str) -> None:
    """Accept a podSpecPatch that only places the pod or sizes its containers; anything else changes what runs."""
    try:
        patch = json.loads(text)
    except ValueError as json_error:
        try:
            patch = yaml.safe_load(text)
        except yaml.YAMLError as e:
            detail = " ".join(str(e).split())
            raise TaskError(f"{where}: does not parse as JSON ({json_error}) or YAML ({detail}) after "
                            f"substitution: {text[:300]!r}") from None
    if patch is None:
        return
    if not isinstance(patch, dict):
        raise TaskError(f"{where}: must be a mapping of pod spec fields, got {type(patch).__name__} "
                        f"after substitution: {text[:300]!r}")
    other = []
    for key in sorted(patch, key=str):
        if key == "containers":
            other += _container_patch_fields(patch[key])
        elif key not in PLACEMENT_PATCH_KEYS:
            other.append(str(key))
    if other:
        raise TaskError(f"{where}: sets {', '.join(other)}, which changes what runs; the local runner only "
                        f"ignores a patch that places the pod ({', '.join(sorted(PLACEMENT_PATCH_KEYS))}) or sets "
                        f"the resources of a container ({', '.join(PATCHED_CONTAINERS)}) by name")


def _container_patch_fields(containers: Any) -> list[str]:
    """The fields of a podSpecPatch's `containers` that do more than size Argo's own containers."""
    if not isinstance(containers, list):
        return ["containers"]
    other = []
    for k, c in enumerate(containers):
        if not isinstance(c, dict) or c.get("name") not in PATCHED_CONTAINERS:
            other.append(f"containers[{k}]")  # another container is a sidecar: it would run beside the step
            continue
        other += [f"containers[{k}].{f}" for f in c if f not in ("name", "resources")]
    return other
