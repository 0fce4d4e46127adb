"""Run a rendered Argo Workflow on this machine: processes in place of pods, a folder in place of S3/PVCs.

    from workflows.runner import run_file
    result = run_file("distill.yaml", out=Path("runs/distill"), parameters={"student": "smollm2"})

The YAML that `argo submit` takes runs here unchanged. Argo's behaviour is the specification: DAG
order, enhanced `depends`, `when`, `withItems`/`withParam` fan-out with aggregated outputs, parameters
and artifacts, retries with backoff, deadlines, daemon servers behind readiness probes, semaphores,
mutexes and parallelism. A field this runner cannot honour the same way is refused before the first
node starts, with its exact path (`spec.templates[3].script: not supported by the local runner ...`);
fields that only matter to a cluster (placement, resources, pod security, GC, metrics, ...) are listed
in `CLUSTER_ONLY` and ignored.

Run folder (`out`):

    workflow.json             spec + resolved parameters of the first run; a re-run must match it
    run.json                  summary of the latest run: per-node timings, wall time, runner overhead
    volumes/<name>/           volumeClaimTemplates and persistentVolumeClaim volumes, shared by all
                              nodes (`volumes={name: folder}` maps any volume to a folder instead)
    nodes/<id>/volumes/<v>/   an emptyDir volume: one per node, as there is one per pod
    nodes/<id>/log.txt        stdout+stderr of every attempt of the node
    nodes/<id>/status.json    written atomically when the node ends: phase, outputs, timings, attempts
    nodes/<id>/artifacts/<a>  output artifact <a>
    s3/<key>                  key-only artifacts (`s3: {key: ...}`): the workflow's default artifact
                              repository, shared by all nodes and kept across re-runs
    nodes/<id>/params/<p>     output parameter file <p>
    nodes/<id>/progress       the step's $ARGO_PROGRESS_FILE ("N/M")

A node id is the DAG task name, `<task>.<i>` for item i of a fanned-out task, and nested DAG tasks
are prefixed by their parent task (`outer.inner`).

Path rule. Containers see absolute paths; for each node the runner maps
  - an output artifact `path`              -> nodes/<id>/artifacts/<name>
  - an output parameter `valueFrom.path`   -> nodes/<id>/params/<name>
  - an input artifact `path`               -> the producing node's local artifact path, used in place
                                              (read-only by convention; nothing is copied)
  - an output artifact with `s3: {key: K}` -> s3/<K> (a key-only artifact: Argo stores it under key K
                                              in the workflow's default artifact repository)
  - an input artifact with `s3: {key: K}`  -> s3/<K> (a folder or a file), unless the task passes the
                                              artifact with `from`; nothing there is an Error naming K
                                              and the local path, unless the input is `optional`
  - a volumeMount `mountPath`              -> the volume's local folder (+ subPath)
An output path that lies inside a mounted volume or an input artifact maps through that instead (a
keyed output always maps to s3/<K>). K is substituted with the node's variables (inputs.parameters.*,
workflow.parameters.*, ...) and must be relative without a `..` part, else the node fails; `s3` may set
nothing but `key` (a bucket, endpoint or secret names another repository, which is refused). Several
nodes may write different keys below one prefix, and a later node may read the prefix as a whole and
publish into it with an output of the same key: both map to the same folder. Output folders are never
emptied before a node runs.
Every string in `command`, `args`, env values and `workingDir` that equals a mapped container path,
or starts with it followed by "/", is rewritten to the local path, longest container path first. A
path inside a longer string (`--out=/data/x`, a `python -c` program) is not rewritten; write it with
`{{inputs.artifacts.X.path}}`, `{{outputs.artifacts.X.path}}` or `{{outputs.parameters.X.path}}`,
which resolve straight to the local path.

Resume works like `argo retry`: a re-run with the same `out` reuses every node whose status.json
says Succeeded, whose output artifacts still exist, and whose resolved inputs are unchanged and not
produced anew in this run (an input artifact is produced anew when it lies inside, or contains, the
folder of a node or a keyed output written by a node that ran in this run: a prefix key read as a
whole contains the keys written below it). It re-runs the rest, and refuses to continue a run of a
different spec or different parameters. Daemons are restarted only when a task that has not yet
succeeded depends on them (directly or transitively). A node that runs again keeps its artifacts/
folder and its keyed s3/<key> folders, so a step can resume row-level work from them as it would from
a PVC; its params/ folder is emptied before every attempt.

Containers become processes: `image` is not used, `python`/`python3` as command[0] is this interpreter
(sys.executable), Kubernetes' `$(VAR)` references in command/args are expanded from the container's env,
and each node gets ARGO_PROGRESS_FILE=nodes/<id>/progress and KUBELLM_LOCAL_RUN=1.

Deliberate local differences, each because the cluster behaviour has no meaning on one laptop:
  - the workflow's parallelism (`spec.parallelism`, or `jobs`) counts non-daemon nodes only (a server
    waiting for its clients must not starve them); it defaults to 1 because this machine has 2 cores
    shared with everything else.
  - a DAG template's `parallelism: N` limits that DAG's children as Argo does, daemons included. A
    child is a task's node, or one node per withItems/withParam item; each is a container or a nested
    DAG. A node starts only if, for every such DAG above it, the child it belongs to already holds a
    slot or fewer than N children do. A container child holds one while its process runs (not while
    it waits in the queue or between retries); a nested DAG from the start of its first node until it
    has ended and its stopped daemons have exited (Argo frees the slot when the DAG node ends; waiting
    for the exit keeps at most N servers in memory). So `parallelism: 1` over a fan-out of nested DAGs
    that each start a server keeps one server up at a time. As on Argo, a daemon that is itself a
    child holds its slot until its DAG ends: a server and its client side by side under
    `parallelism: 1` can never both run, and the runner fails saying so instead of waiting forever.
  - a readiness probe also bounds start-up: the daemon fails after `failureThreshold` consecutive
    failed probes when that field is set, and in any case after the template's activeDeadlineSeconds
    or DAEMON_READY_CAP_S (Kubernetes would leave it unready forever).
  - `retryPolicy: OnTransientError` never retries: there is no transient infrastructure here.
  - failing to collect outputs (a missing artifact or parameter file) makes the node Error.
  - nodes inherit this process's environment (PATH, HOME, ...); a `secretKeyRef` env var takes the
    local variable of the same name if set and is removed otherwise. Secret values are never printed.
  - failFast: like Argo in practice, a failure omits its dependents while independent branches keep
    being scheduled; the DAG ends Failed once nothing runs (argoproj/argo-workflows#5223).
  - a workflow-level semaphore is always granted: one local run is one workflow.
  - a template's `podSpecPatch` is ignored when it only places the pod (its top-level keys are among
    PLACEMENT_PATCH_KEYS: nodeSelector, tolerations, affinity, ...). It is substituted and parsed
    (JSON or YAML) when the node starts; any other key changes what runs and makes the node Error.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

TERMINAL = frozenset({"Succeeded", "Failed", "Error", "Skipped", "Omitted"})
FAILED = frozenset({"Failed", "Error"})
DAEMON_READY_CAP_S = 900.0  # give up on a daemon that is never ready after this long
DAEMON_STOP_GRACE_S = 30.0  # SIGTERM, then SIGKILL after this long
KILL_GRACE_S = 10.0  # deadline exceeded or Ctrl-C: SIGTERM, then SIGKILL after this long
POLL_S = 0.05

# ---------------------------------------------------------------------------------------------
# What the runner understands. kind -> {field: kind of its value, or None for a plain value}.
# "[kind]" is a list of kind, "*" is anything (read as a whole, or not at all).

_SUPPORTED: dict[str, dict[str, str | None]] = {
    "workflow": {"apiVersion": None, "kind": None, "spec": "spec"},
    "spec": {"entrypoint": None, "arguments": "wf-arguments", "templates": "[template]",
             "volumes": "[volume]", "volumeClaimTemplates": "[claim]", "parallelism": None,
             "synchronization": "sync"},
    "wf-arguments": {"parameters": "[wf-parameter]"},
    "wf-parameter": {"name": None, "value": None, "default": None, "enum": None, "description": None},
    "template": {"name": None, "container": "container", "dag": "dag", "inputs": "inputs",
                 "outputs": "outputs", "retryStrategy": "retry", "activeDeadlineSeconds": None,
                 "timeout": None, "daemon": None, "synchronization": "sync", "volumes": "[volume]",
                 "parallelism": None, "podSpecPatch": None},
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
# podSpecPatch that does more than place the pod, ...) are NOT here: they fail.
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
_RETRY_POLICIES = ("Always", "OnFailure", "OnError", "OnTransientError")
_RESULTS = ("Succeeded", "Failed", "Errored", "Skipped", "Daemoned", "AnySucceeded", "AllFailed")
TEMPLATE_TAG = re.compile(r"\{\{(.*?)\}\}")


class WorkflowError(ValueError):
    """The workflow cannot run locally as written; the message names the field and the fix."""


class _Unresolved(Exception):
    """A {{variable}} that has no value here (the reason is the message)."""


class _TaskError(Exception):
    """A task or node cannot be started; it ends in phase Error with this message."""


@dataclass
class RunResult:
    phase: str  # "Succeeded" or "Failed"
    nodes: dict[str, dict]  # node id -> status (as in nodes/<id>/status.json)
    wall_s: float
    overhead_s: float  # wall time not covered by any node process
    out: Path
    failed_node: str | None = None
    log_tail: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.phase == "Succeeded"


# ---------------------------------------------------------------------------------------------
# Small pure helpers: value formatting, durations, expressions.


def _as_str(value: Any) -> str:
    """A parameter value as Argo renders it: strings as-is, everything else as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, separators=(",", ":"))


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def _seconds(value: Any, where: str) -> float:
    """Seconds from an Argo duration: 30, "30", "30s", "1m30s", "200ms"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise WorkflowError(f"{where}: {value!r} is not a duration (examples: 30, \"30s\", \"1m30s\", \"200ms\")")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


_EXPR_TOKEN = re.compile(
    r"""\s*(?:("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(&&|\|\||==|!=|<=|>=|=~|!~|[<>!()])|([^\s()!=<>&|"']+))"""
)
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def parse_expression(text: str) -> tuple:
    """Parse a govaluate-style boolean expression (Argo `when`, `depends`) into a small tree.

    Grammar: or := and ('||' and)* ; and := cmp ('&&' cmp)* ; cmp := unary (op unary)? ;
    unary := '!' unary | '(' or ')' | literal. Literals are quoted strings or bare words;
    bare words are resolved by the evaluator (numbers, true/false, task results, plain strings).
    """
    tokens: list[tuple[str, str]] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        m = _EXPR_TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"cannot read {text[pos:]!r} in {text!r}")
        if m.group(1) is not None:
            tokens.append(("str", re.sub(r"\\(.)", r"\1", m.group(1)[1:-1])))
        elif m.group(2) is not None:
            tokens.append(("op", m.group(2)))
        else:
            tokens.append(("word", m.group(3)))
        pos = m.end()
    if not tokens:
        raise ValueError("empty expression")
    i = 0

    def peek() -> tuple[str, str] | None:
        return tokens[i] if i < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal i
        i += 1
        return tokens[i - 1]

    def parse_or() -> tuple:
        node = parse_and()
        while peek() == ("op", "||"):
            take()
            node = ("or", node, parse_and())
        return node

    def parse_and() -> tuple:
        node = parse_cmp()
        while peek() == ("op", "&&"):
            take()
            node = ("and", node, parse_cmp())
        return node

    def parse_cmp() -> tuple:
        node = parse_unary()
        tok = peek()
        if tok and tok[0] == "op" and tok[1] in ("==", "!=", "<", ">", "<=", ">=", "=~", "!~"):
            take()
            node = ("cmp", tok[1], node, parse_unary())
        return node

    def parse_unary() -> tuple:
        tok = peek()
        if tok is None:
            raise ValueError(f"{text!r} ends too early")
        take()
        if tok == ("op", "!"):
            return ("not", parse_unary())
        if tok == ("op", "("):
            node = parse_or()
            if peek() != ("op", ")"):
                raise ValueError(f"missing ')' in {text!r}")
            take()
            return node
        if tok[0] == "str":
            return ("str", tok[1])
        if tok[0] == "word":
            return ("word", tok[1])
        raise ValueError(f"unexpected {tok[1]!r} in {text!r}")

    tree = parse_or()
    if i != len(tokens):
        raise ValueError(f"unexpected {tokens[i][1]!r} in {text!r}")
    return tree


def _evaluate(tree: tuple, word: Callable[[str], Any]) -> Any:
    kind = tree[0]
    if kind == "str":
        return tree[1]
    if kind == "word":
        return word(tree[1])
    if kind == "not":
        return not _need_bool(_evaluate(tree[1], word), "!")
    if kind in ("and", "or"):
        left = _need_bool(_evaluate(tree[1], word), "&&" if kind == "and" else "||")
        if left == (kind == "or"):
            return left
        return _need_bool(_evaluate(tree[2], word), "&&" if kind == "and" else "||")
    op, a, b = tree[1], _evaluate(tree[2], word), _evaluate(tree[3], word)
    if op in ("==", "!="):
        equal = type(a) is type(b) and a == b
        return equal if op == "==" else not equal
    if op in ("=~", "!~"):
        if not (isinstance(a, str) and isinstance(b, str)):
            raise ValueError(f"{op} needs strings, got {a!r} and {b!r}")
        found = re.search(b, a) is not None
        return found if op == "=~" else not found
    if type(a) is not type(b) or not isinstance(a, (float, str)):
        raise ValueError(f"cannot compare {a!r} {op} {b!r}")
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]


def _need_bool(value: Any, op: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{op} needs true/false, got {value!r}")
    return value


def eval_when(text: str) -> bool:
    """Evaluate a substituted `when`. Bare words are strings, as in Argo (`{{x}} == heads`)."""

    def word(w: str) -> Any:
        if w in ("true", "false"):
            return w == "true"
        if _NUMBER.fullmatch(w):
            return float(w)
        return w

    result = _evaluate(parse_expression(text), word)
    return _need_bool(result, "when")


def depends_tasks(tree: tuple) -> list[str]:
    """Task names a parsed `depends` expression refers to, in order of appearance."""
    if tree[0] == "word":
        return [tree[1].split(".")[0] if tree[1].rsplit(".", 1)[-1] in _RESULTS else tree[1]]
    if tree[0] == "str":
        raise ValueError(f"quoted {tree[1]!r} has no meaning in depends")
    if tree[0] == "cmp":
        raise ValueError(f"comparison {tree[1]!r} has no meaning in depends")
    names: list[str] = []
    for sub in tree[1:]:
        for n in depends_tasks(sub):
            if n not in names:
                names.append(n)
    return names


def dag_dependencies(tmpl: dict, tpath: str) -> tuple[dict[str, list[str]], dict[str, tuple | None], list[str]]:
    """Per task of a DAG template: the tasks it waits for and its parsed depends logic; problems."""
    tasks = (tmpl.get("dag") or {}).get("tasks") or []
    names = [t.get("name") for t in tasks]
    deps: dict[str, list[str]] = {}
    logic: dict[str, tuple | None] = {}
    problems: list[str] = []
    for j, t in enumerate(tasks):
        path, name = f"{tpath}.dag.tasks[{j}]", t.get("name")
        if not name:
            problems.append(f"{path}.name: missing")
            continue
        if names.count(name) > 1 and names.index(name) != j:
            problems.append(f"{path}.name: task '{name}' is defined twice in this DAG")
        deps[name], logic[name] = [], None
        if "depends" in t and "dependencies" in t:
            problems.append(f"{path}: use either depends or dependencies, not both")
        if t.get("depends"):
            try:
                tree = parse_expression(str(t["depends"]))
                found = depends_tasks(tree)
            except ValueError as e:
                problems.append(f"{path}.depends: {e}")
                continue
            for w in _words(tree):
                if "." in w and w.rsplit(".", 1)[1] not in _RESULTS:
                    problems.append(f"{path}.depends: unknown result in '{w}' (use one of {', '.join(_RESULTS)})")
            deps[name], logic[name] = found, tree
        elif t.get("dependencies"):
            found = [str(d) for d in t["dependencies"]]
            deps[name] = found
            tree = ("word", found[0])
            for d in found[1:]:
                tree = ("and", tree, ("word", d))
            logic[name] = tree
        for d in deps[name]:
            if d not in names:
                field_name = "depends" if t.get("depends") else "dependencies"
                problems.append(f"{path}.{field_name}: unknown task '{d}' (tasks are {', '.join(map(str, names))})")
    # cycles: depth-first search over known names
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        state[n] = 1
        for d in deps.get(n, []):
            if d not in deps:
                continue
            if state.get(d) == 1:
                cycle = trail[trail.index(d):] + [d] if d in trail else [n, d]
                problems.append(f"{tpath}.dag.tasks: dependency cycle {' -> '.join(cycle)}")
            elif d not in state:
                visit(d, trail + [d])
        state[n] = 2

    for n in deps:
        if n not in state:
            visit(n, [n])
    return deps, logic, problems


def _words(tree: tuple) -> list[str]:
    if tree[0] == "word":
        return [tree[1]]
    return [w for sub in tree[1:] if isinstance(sub, tuple) for w in _words(sub)]


def ancestors(deps: dict[str, list[str]], name: str) -> set[str]:
    """Every task `name` waits for, directly or transitively."""
    seen: set[str] = set()
    stack = list(deps.get(name, []))
    while stack:
        d = stack.pop()
        if d not in seen:
            seen.add(d)
            stack.extend(deps.get(d, []))
    return seen


def _aggregate(values: list[str]) -> str:
    """Argo's aggregated output of a fanned-out task: a JSON list, elements parsed if all are JSON."""
    try:
        parsed = [json.loads(v) for v in values]
    except ValueError:
        parsed = list(values)
    return json.dumps(parsed, separators=(",", ":"))


def _subst(value: Any, lookup: Callable[[str], str], where: str) -> Any:
    """Replace every {{variable}} in the strings of `value` (single pass: values are not re-expanded)."""
    if isinstance(value, str):

        def one(m: re.Match) -> str:
            name = m.group(1).strip()
            try:
                return lookup(name)
            except _Unresolved as e:
                raise _TaskError(f"{where}: cannot resolve '{{{{{name}}}}}': {e}") from None

        return TEMPLATE_TAG.sub(one, value)
    if isinstance(value, list):
        return [_subst(v, lookup, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _subst(v, lookup, f"{where}.{k}") for k, v in value.items()}
    return value


def iter_strings(value: Any, path: str, skip: frozenset[str] = frozenset()):
    """Yield (field path, string) for every string below value."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from iter_strings(v, f"{path}[{i}]", skip)
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in skip:
                yield from iter_strings(v, f"{path}.{k}" if path else k, skip)


def _k8s_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion from the container's own env; unknown references stay, $$ escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def _atomic_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _iso(t: float | None) -> str | None:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds") if t else None


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, start: int = 0, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# Static checks: everything is verified before the first node starts.


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

    templates = [t for t in spec.get("templates") or [] if isinstance(t, dict)]
    names = [t.get("name") for t in templates]
    for i, n in enumerate(names):
        if not n:
            problems.append(f"spec.templates[{i}].name: missing")
        elif names.index(n) != i:
            problems.append(f"spec.templates[{i}].name: template '{n}' is defined twice")
    entry = spec.get("entrypoint")
    if not entry:
        problems.append("spec.entrypoint: missing")
    elif entry not in names:
        problems.append(f"spec.entrypoint: no template named '{entry}' (templates are {', '.join(map(str, names))})")

    wf_params = [p.get("name") for p in (spec.get("arguments") or {}).get("parameters") or []]
    declared_volumes = {v.get("name") for v in spec.get("volumes") or []}
    declared_volumes |= {(c.get("metadata") or {}).get("name") for c in spec.get("volumeClaimTemplates") or []}
    for name in volumes:
        if name not in declared_volumes:
            problems.append(f"volumes: '{name}' is not a volume of this workflow (volumes are {', '.join(sorted(map(str, declared_volumes))) or 'none'})")

    for i, t in enumerate(templates):
        tp = f"spec.templates[{i}]"
        is_c, is_d = "container" in t, "dag" in t
        kinds = [k for k in t if k in ("script", "steps", "resource", "suspend", "http", "plugin", "containerSet", "data")]
        if is_c == is_d and not kinds:
            problems.append(f"{tp}: needs exactly one of container or dag")
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
        if rs.get("retryPolicy") and rs["retryPolicy"] not in _RETRY_POLICIES:
            problems.append(f"{tp}.retryStrategy.retryPolicy: {rs['retryPolicy']!r} is not one of {', '.join(_RETRY_POLICIES)}")
        for key in ("duration", "maxDuration", "cap"):
            if key in (rs.get("backoff") or {}) and "{{" not in str(rs["backoff"][key]):
                try:
                    _seconds(rs["backoff"][key], f"{tp}.retryStrategy.backoff.{key}")
                except WorkflowError as e:
                    problems.append(str(e))
        for j, s in enumerate((t.get("synchronization") or {}).get("semaphores") or []):
            ref = s.get("configMapKeyRef") or {}
            if not ref.get("name") or not ref.get("key"):
                problems.append(f"{tp}.synchronization.semaphores[{j}].configMapKeyRef: needs name and key")
        if is_d:
            deps, _, graph_problems = dag_dependencies(t, tp)
            problems += graph_problems
            for j, task in enumerate((t.get("dag") or {}).get("tasks") or []):
                path = f"{tp}.dag.tasks[{j}]"
                if task.get("template") not in names:
                    problems.append(f"{path}.template: no template named '{task.get('template')}' (templates are {', '.join(map(str, names))})")
                if "withItems" in task and "withParam" in task:
                    problems.append(f"{path}: use either withItems or withParam, not both")
                if "withItems" in task and not isinstance(task["withItems"], list):
                    problems.append(f"{path}.withItems: must be a list")
    problems += _check_variables(spec, templates, wf_params)
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
    allowed = _SUPPORTED[kind]
    for key, v in value.items():
        sub = f"{path}.{key}" if path else key
        if key in allowed:
            if allowed[key] is not None:
                _check_fields(v, allowed[key], sub, problems, volumes)
        elif kind == "volume" and value.get("name") in volumes:
            pass  # any volume source is fine once the caller maps it to a local folder
        elif kind == "volume" and isinstance(v, dict):
            problems.append(f"{sub}: a {key} volume has no local equivalent; pass a folder for it "
                            f"(volumes={{'{value.get('name')}': path}}, or --volume {value.get('name')}=PATH)")
        elif kind == "s3-key":
            problems.append(f"{sub}: not supported by the local runner (supported: key): only key-only artifacts "
                            "in the workflow's default artifact repository run locally, as <out>/s3/<key>; "
                            f"{key} names another repository")
        elif f"{kind}.{key}" not in CLUSTER_ONLY:
            problems.append(f"{sub}: not supported by the local runner (supported: {', '.join(sorted(allowed))})")


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


def _check_variables(spec: dict, templates: list[dict], wf_params: list[str]) -> list[str]:
    problems: list[str] = []
    workflow_vars = {"workflow.name", "workflow.uid"} | {f"workflow.parameters.{p}" for p in wf_params}

    def report(path: str, text: str, known: set[str], pattern: Callable[[str], str | None] | None = None) -> None:
        for m in TEMPLATE_TAG.finditer(text):
            name, tag = m.group(1).strip(), m.group(0)
            if name.startswith("="):
                problems.append(f"{path}: expression template '{tag}' is not supported by the local runner")
                continue
            if name in known:
                continue
            reason = pattern(name) if pattern else None
            if reason == "":
                continue
            if reason:
                problems.append(f"{path}: '{tag}' {reason}")
            else:
                shown = ", ".join("{{" + k + "}}" for k in sorted(known)[:12])
                more = " and {{tasks.<dependency>.outputs...}}" if pattern else ""
                problems.append(f"{path}: unknown variable '{tag}' (known here: {shown or 'none'}{more})")

    for p_path, text in iter_strings((spec.get("arguments") or {}), "spec.arguments"):
        report(p_path, text, {"workflow.name"})

    for i, t in enumerate(templates):
        tp = f"spec.templates[{i}]"
        inputs = t.get("inputs") or {}
        in_params = {p.get("name") for p in inputs.get("parameters") or []}
        in_arts = {a.get("name") for a in inputs.get("artifacts") or []}
        if "container" in t:
            outputs = t.get("outputs") or {}
            known = workflow_vars | {"pod.name", "retries"}
            known |= {f"inputs.parameters.{p}" for p in in_params}
            known |= {f"inputs.artifacts.{a}.path" for a in in_arts}
            known |= {f"outputs.artifacts.{a.get('name')}.path" for a in outputs.get("artifacts") or []}
            known |= {f"outputs.parameters.{p.get('name')}.path" for p in outputs.get("parameters") or []}
            skip = frozenset(k.split(".", 1)[1] for k in CLUSTER_ONLY if k.startswith(("template.", "container.")))
            for path, text in iter_strings(t, tp, skip | {"name"}):
                report(path, text, known)
        if "dag" in t:
            tasks = (t.get("dag") or {}).get("tasks") or []
            task_names = [x.get("name") for x in tasks]
            deps, _, _ = dag_dependencies(t, tp)
            base = workflow_vars | {f"inputs.parameters.{p}" for p in in_params} | {f"inputs.artifacts.{a}" for a in in_arts}

            def task_ref(allowed: set[str] | None, item: bool) -> Callable[[str], str | None]:
                def check(name: str) -> str | None:
                    if item and (name == "item" or re.fullmatch(r"item\.[^.]+", name)):
                        return ""
                    m = re.fullmatch(r"tasks\.([^.]+)\.(ip|outputs\.(parameters|artifacts)\.[^.]+)", name)
                    if not m:
                        return None
                    if m.group(1) not in task_names:
                        return f"refers to no task of this DAG (tasks are {', '.join(map(str, task_names))})"
                    if allowed is not None and m.group(1) not in allowed:
                        return f"refers to task '{m.group(1)}', which this task does not depend on (add it to depends)"
                    return ""

                return check

            for j, task in enumerate(tasks):
                path = f"{tp}.dag.tasks[{j}]"
                check = task_ref(ancestors(deps, task.get("name")), "withItems" in task or "withParam" in task)
                for key in ("arguments", "when", "withParam", "withItems"):
                    for spath, text in iter_strings(task.get(key), f"{path}.{key}"):
                        report(spath, text, base, check)
            for spath, text in iter_strings(t.get("outputs"), f"{tp}.outputs"):
                report(spath, text, base, task_ref(None, False))
    return problems


# ---------------------------------------------------------------------------------------------
# Runtime state


@dataclass(eq=False)
class _Node:
    """One container run (one pod on a cluster), including its retries."""

    id: str
    task: "_Task"
    tmpl: dict
    tpath: str
    inputs: dict[str, str]
    in_arts: dict[str, Path | None]
    dir: Path
    item: Any = None
    daemon: bool = False
    phase: str = "Pending"
    message: str = ""
    reused: bool = False
    attempts: int = 0
    exit_code: int | None = None
    outputs: dict = field(default_factory=lambda: {"parameters": {}, "artifacts": {}})
    proc: subprocess.Popen | None = None
    started: float | None = None  # wall clock, first attempt
    finished: float | None = None
    t_first: float = 0.0  # monotonic, first attempt
    t_attempt: float = 0.0  # monotonic, current attempt
    intervals: list = field(default_factory=list)  # (start, end) monotonic spans of useful work
    retry_at: float | None = None
    deadline: float | None = None
    kill_at: float | None = None
    kill_reason: str | None = None
    stopping: bool = False
    ready: bool = False
    probe: dict | None = None
    probe_next: float = 0.0
    probe_fails: int = 0
    ready_by: float = 0.0
    locks: list = field(default_factory=list)
    log_start: int = 0
    stream_pos: int = 0
    recorded: dict | None = None  # status.json of the earlier run this node was reused from
    art_paths: dict = field(default_factory=dict)
    param_paths: dict = field(default_factory=dict)


@dataclass(eq=False)
class _Task:
    name: str
    id: str
    spec: dict
    path: str
    dag: "_Dag"
    daemon: bool = False
    keep_daemon_down: bool = False
    phase: str | None = None
    message: str = ""
    fanout: bool = False
    children: list = field(default_factory=list)  # _Node or _Dag


@dataclass(eq=False)
class _Dag:
    id: str
    tmpl: dict
    tpath: str
    inputs: dict[str, str]
    in_arts: dict[str, Path | None]
    parent: _Task | None
    tasks: dict[str, _Task] = field(default_factory=dict)
    deps: dict[str, list[str]] = field(default_factory=dict)
    logic: dict[str, tuple | None] = field(default_factory=dict)
    phase: str = "Running"
    message: str = ""
    outputs: dict = field(default_factory=lambda: {"parameters": {}, "artifacts": {}})
    started: bool = False  # a node inside it was launched (reused nodes do not count)


def _daemoned(task: _Task) -> bool:
    """A running daemon task that passed its readiness probe: dependents may start."""
    if task.phase is not None or not task.daemon or not task.children:
        return False
    return all(c.phase in TERMINAL or (c.ready and c.phase == "Running") for c in task.children) and any(
        c.ready for c in task.children
    )


def _fulfilled(task: _Task) -> bool:
    return task.phase is not None or _daemoned(task)


class _Display:
    """Rich live table on a terminal, plain timestamped lines otherwise."""

    def __init__(self, console: Any) -> None:
        from rich.console import Console

        self.console = console or Console(highlight=False)
        self.live = None
        self._last = 0.0
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4, transient=True)
            self.live.start()

    def say(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    def event(self, nid: str, phase: str, message: str = "") -> None:
        if self.live is not None and phase not in FAILED and "retrying" not in message:
            return
        style = "red" if phase in FAILED else "green" if phase == "Succeeded" else None
        self.say(f"{time.strftime('%H:%M:%S')} {nid:<28} {phase}" + (f"  {message}" if message else ""), style)

    def refresh(self, rows: list[tuple[str, str, str, str]], force: bool = False) -> None:
        if self.live is None or (not force and time.monotonic() - self._last < 0.25):
            return
        from rich.table import Table

        self._last = time.monotonic()
        table = Table(box=None, pad_edge=False)
        for col in ("node", "phase", "progress", "elapsed"):
            table.add_column(col)
        for row in rows[-25:]:
            table.add_row(*row)
        self.live.update(table)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


# ---------------------------------------------------------------------------------------------
# The run


class _Run:
    def __init__(self, doc: dict, out: Path, parameters: dict[str, str], volumes: dict[str, Path],
                 jobs: int | None, semaphore_limits: dict[str, int], console: Any, stream_logs: bool) -> None:
        problems = check_supported(doc, volumes)
        if problems:
            raise WorkflowError("this workflow cannot run locally:\n  " + "\n  ".join(problems))
        self.spec = json.loads(json.dumps(doc["spec"], default=str))  # plain JSON types, also for the resume check
        self.templates = {t["name"]: (t, f"spec.templates[{i}]") for i, t in enumerate(self.spec["templates"])}
        self.out = Path(out).resolve()
        self.name = re.sub(r"[^a-z0-9-]+", "-", self.out.name.lower()).strip("-") or "workflow"
        self.params = self._resolve_parameters(parameters)
        self.parallelism = int(jobs or self.spec.get("parallelism") or 1)
        self.sem_limits = semaphore_limits
        self.volume_given = {name: Path(folder).resolve() for name, folder in volumes.items()}
        self.volume_sources = {v["name"]: v for v in self.spec.get("volumes") or []}
        self.volume_sources |= {c["metadata"]["name"]: {"persistentVolumeClaim": {}} for c in self.spec.get("volumeClaimTemplates") or []}
        self.console, self.stream_logs = console, stream_logs
        self.uid = self._check_resume()
        self.queue: list[_Node] = []
        self.running: list[_Node] = []
        self.held: dict[str, int] = {}
        self.rows: list[Any] = []  # _Node and skipped/omitted _Task, in order of appearance
        self.failures: list[Any] = []
        self.changed = False
        self.starting, self.pending_signal = False, None
        self.fresh: set[Path] = set()  # node folders and keyed outputs of nodes that ran in this run: their consumers re-run too

    # -- parameters and resume -----------------------------------------------------------------

    def _resolve_parameters(self, given: dict[str, str]) -> dict[str, str]:
        declared = (self.spec.get("arguments") or {}).get("parameters") or []
        names = [p["name"] for p in declared]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise WorkflowError(f"unknown parameter(s) {', '.join(unknown)}; this workflow takes: {', '.join(names) or 'no parameters'}")
        values = {}
        for p in declared:
            name = p["name"]
            raw = given[name] if name in given else p.get("value", p.get("default"))
            if raw is None:
                raise WorkflowError(f"parameter '{name}' has no value; pass one (-p {name}=...)")
            value = _as_str(raw).replace("{{workflow.name}}", self.name)
            enum = [_as_str(e) for e in p.get("enum") or []]
            if enum and value not in enum:
                raise WorkflowError(f"parameter '{name}'={value!r} is not allowed; allowed values: {', '.join(enum)}")
            values[name] = value
        return values

    def _check_resume(self) -> str:
        record = self.out / "workflow.json"
        old = _read_json(record)
        if old is None:
            uid = str(uuid.uuid4())
            _atomic_json(record, {"name": self.name, "uid": uid, "created": _iso(time.time()),
                                  "parameters": self.params, "spec": self.spec})
            return uid
        diffs = [f"parameter {k}: {old.get('parameters', {}).get(k)!r} -> {self.params.get(k)!r}"
                 for k in sorted(set(old.get("parameters", {})) | set(self.params))
                 if old.get("parameters", {}).get(k) != self.params.get(k)]
        diffs += _diff(old.get("spec"), self.spec, "spec")
        if diffs:
            shown = "\n  ".join(diffs[:8]) + (f"\n  ... and {len(diffs) - 8} more" if len(diffs) > 8 else "")
            raise WorkflowError(f"{self.out} holds a run of a different workflow or parameters:\n  {shown}\n"
                                "resuming would mix results; use a new --out (or delete this folder) to start fresh")
        return old.get("uid") or str(uuid.uuid4())

    # -- main loop -----------------------------------------------------------------------------

    def execute(self) -> RunResult:
        self.display = _Display(self.console)
        self.t0, self.started = time.monotonic(), time.time()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        interrupted = None
        try:
            self.root = self._start_entry()
            while True:
                self._poll()
                self._advance_all()
                self._start_ready()
                self._stream()
                if self.display.live is not None:
                    self.display.refresh(self._live_rows())
                if self.root.phase != "Running" and not self.running:
                    break
                self._check_stall()
                time.sleep(POLL_S)
        except BaseException as e:
            interrupted = e
            self._kill_all()
        finally:
            self.display.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if interrupted is not None:
            self._summarize(interrupted=True)
            raise interrupted
        return self._summarize()

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Ctrl-C or SIGTERM: stop everything cleanly, but never between fork and bookkeeping
        if self.starting:
            self.pending_signal = signum
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def _start_entry(self) -> _Dag:
        entry = self.spec["entrypoint"]
        tmpl, tpath = self.templates[entry]
        if "dag" in tmpl:
            try:
                inputs, in_arts = self._bind_inputs(tmpl, tpath, dict(self.params), {}, "spec.entrypoint", "")
            except _TaskError as e:
                raise WorkflowError(str(e)) from None
            return self._new_dag("", tmpl, tpath, inputs, in_arts, None)
        # a single container entrypoint: run it as the only task of an implicit DAG
        wrapper = {"name": "(entrypoint)", "dag": {"tasks": [{"name": entry, "template": entry, "arguments": {
            "parameters": [{"name": k, "value": v} for k, v in self.params.items()
                           if k in {p["name"] for p in (tmpl.get("inputs") or {}).get("parameters") or []}]}}]}}
        return self._new_dag("", wrapper, "spec", {}, {}, None)

    def _new_dag(self, did: str, tmpl: dict, tpath: str, inputs: dict, in_arts: dict, parent: _Task | None) -> _Dag:
        dag = _Dag(did, tmpl, tpath, inputs, in_arts, parent)
        dag.deps, dag.logic, _ = dag_dependencies(tmpl, tpath)
        for j, spec in enumerate(tmpl["dag"]["tasks"]):
            tid = f"{did}.{spec['name']}" if did else spec["name"]
            child_tmpl = self.templates[spec["template"]][0]
            dag.tasks[spec["name"]] = _Task(spec["name"], tid, spec, f"{tpath}.dag.tasks[{j}]", dag,
                                            daemon=bool(child_tmpl.get("daemon")))
        for task in dag.tasks.values():
            if task.daemon:
                # resume: a daemon stays down when it and everything after it already succeeded
                after = [t for t in dag.tasks.values() if task.name in ancestors(dag.deps, t.name)]
                done = [t for t in [task, *after] if (_read_json(self.out / "nodes" / t.id / "status.json") or {}).get("phase") == "Succeeded"]
                task.keep_daemon_down = len(done) == len(after) + 1
        self.changed = True
        return dag

    def _advance_all(self) -> None:
        for _ in range(100):  # settle chains of reused nodes in one tick
            self.changed = False
            self._advance(self.root)
            if not self.changed:
                break

    def _advance(self, dag: _Dag) -> None:
        if dag.phase != "Running":
            return
        for task in dag.tasks.values():
            if task.phase is not None:
                continue
            if task.children:
                for c in task.children:
                    if isinstance(c, _Dag):
                        self._advance(c)
                self._settle(task)
                continue
            if not all(_fulfilled(dag.tasks[d]) for d in dag.deps[task.name]):
                continue
            self.changed = True
            logic = dag.logic[task.name]
            if logic is not None and not _evaluate(logic, self._results_of(dag)):
                self._decide(task, "Omitted", "depends condition not met")
                continue
            try:
                self._expand(task)
            except _TaskError as e:
                for c in task.children:  # items expanded before the error do not run
                    if c in self.queue:
                        self.queue.remove(c)
                        c.phase = "Omitted"
                self._decide(task, "Error", str(e))
                continue
            self._settle(task)
        if all(_fulfilled(t) for t in dag.tasks.values()):
            self._finish_dag(dag)

    def _decide(self, task: _Task, phase: str, message: str) -> None:
        task.phase, task.message = phase, message
        self.changed = True
        self.rows.append(task)
        self.display.event(task.id, phase, message)
        if phase in FAILED:
            self.failures.append(task)

    def _settle(self, task: _Task) -> None:
        """Derive a started task's phase from its children once they are all done."""
        if task.phase is not None or not task.children:
            return
        phases = [c.phase for c in task.children]
        if not all(p in TERMINAL for p in phases):
            return
        if task.fanout:
            task.phase = "Failed" if "Failed" in phases else "Error" if "Error" in phases else "Succeeded"
        else:
            task.phase, task.message = phases[0], task.children[0].message
        self.changed = True
        if task.fanout or isinstance(task.children[0], _Dag):
            _atomic_json(self.out / "nodes" / task.id / "status.json",
                         {"id": task.id, "kind": "TaskGroup" if task.fanout else "DAG", "phase": task.phase,
                          "children": [c.id for c in task.children]})

    def _results_of(self, dag: _Dag) -> Callable[[str], bool]:
        def word(w: str) -> bool:
            name, _, result = w.partition(".")
            task = dag.tasks[name]
            phase, kids = task.phase, task.children
            values = {
                "Succeeded": phase == "Succeeded", "Failed": phase == "Failed", "Errored": phase == "Error",
                "Skipped": phase == "Skipped",
                "Daemoned": task.daemon and any(getattr(c, "ready", False) or getattr(c, "reused", False) for c in kids),
                "AnySucceeded": task.fanout and any(c.phase == "Succeeded" for c in kids),
                "AllFailed": task.fanout and bool(kids) and all(c.phase == "Failed" for c in kids),
            }
            if not result:
                return values["Succeeded"] or values["Skipped"] or values["Daemoned"]
            return values[result]

        return word

    def _finish_dag(self, dag: _Dag) -> None:
        for task in dag.tasks.values():
            for c in task.children:
                if isinstance(c, _Node) and c.daemon and c.proc is not None:
                    self._stop(c, DAEMON_STOP_GRACE_S)
        memo: dict[str, str] = {}

        def branch(name: str) -> str:
            # Argo: an omitted task inherits the phase of the branch above it, failures first
            if name not in memo:
                t = dag.tasks[name]
                phase = t.phase or "Succeeded"  # a daemoned task counts as succeeded
                if phase == "Omitted":
                    above = [branch(d) for d in dag.deps[name]]
                    phase = next((p for p in above if p in FAILED), "Succeeded")
                memo[name] = phase
            return memo[name]

        needed = {d for ds in dag.deps.values() for d in ds}
        leaves = [n for n in dag.tasks if n not in needed]
        failed = [n for n in leaves if branch(n) in FAILED]
        dag.phase = branch(failed[0]) if failed else "Succeeded"
        if failed:
            dag.message = f"task '{failed[0]}' {branch(failed[0]).lower()}"
        if dag.phase == "Succeeded" and dag.tmpl.get("outputs"):
            try:
                lookup = self._dag_lookup(dag, None, _NO_ITEM)
                outs = dag.tmpl["outputs"]
                for j, p in enumerate(outs.get("parameters") or []):
                    dag.outputs["parameters"][p["name"]] = _subst(
                        str(p["valueFrom"]["parameter"]), lookup, f"{dag.tpath}.outputs.parameters[{j}].valueFrom.parameter")
                for j, a in enumerate(outs.get("artifacts") or []):
                    dag.outputs["artifacts"][a["name"]] = _subst(a["from"], lookup, f"{dag.tpath}.outputs.artifacts[{j}].from")
            except _TaskError as e:
                dag.phase, dag.message = "Error", str(e)
                self.failures.append(dag)
        self.changed = True

    # -- expanding a task into nodes ---------------------------------------------------------------

    def _dag_lookup(self, dag: _Dag, allowed: set[str] | None, item: Any) -> Callable[[str], str]:
        def lookup(name: str) -> str:
            if item is not _NO_ITEM and (name == "item" or name.startswith("item.")):
                if name == "item":
                    return _as_str(item)
                if not isinstance(item, dict) or name[5:] not in item:
                    raise _Unresolved(f"the item {_as_str(item)} has no key '{name[5:]}'")
                return _as_str(item[name[5:]])
            parts = name.split(".")
            if parts[0] == "tasks" and len(parts) in (3, 5):
                task = dag.tasks.get(parts[1])
                if task is None:
                    raise _Unresolved(f"no task '{parts[1]}' in this DAG")
                if allowed is not None and task.name not in allowed:
                    raise _Unresolved(f"task '{task.name}' is not among this task's dependencies")
                if len(parts) == 3 and parts[2] == "ip":
                    return "127.0.0.1"
                if len(parts) == 5 and parts[2] == "outputs" and parts[3] in ("parameters", "artifacts"):
                    return self._task_output(task, parts[3], parts[4])
            if parts[:2] == ["inputs", "parameters"] and len(parts) == 3 and parts[2] in dag.inputs:
                return dag.inputs[parts[2]]
            if parts[:2] == ["inputs", "artifacts"] and len(parts) == 3 and parts[2] in dag.in_arts:
                if dag.in_arts[parts[2]] is None:
                    raise _Unresolved(f"optional input artifact '{parts[2]}' was not supplied")
                return str(dag.in_arts[parts[2]])
            return self._workflow_var(name)

        return lookup

    def _workflow_var(self, name: str) -> str:
        if name == "workflow.name":
            return self.name
        if name == "workflow.uid":
            return self.uid
        if name.startswith("workflow.parameters.") and name[20:] in self.params:
            return self.params[name[20:]]
        raise _Unresolved("unknown variable")

    def _task_output(self, task: _Task, kind: str, key: str) -> str:
        if not _fulfilled(task):
            raise _Unresolved(f"task '{task.name}' has not finished")
        if task.fanout:
            if kind == "artifacts":
                raise _Unresolved(f"task '{task.name}' is fanned out; Argo does not aggregate artifacts")
            return _aggregate([c.outputs["parameters"][key] for c in task.children if key in c.outputs["parameters"]])
        child = task.children[0] if task.children else None
        if child is not None and key in child.outputs[kind]:
            return child.outputs[kind][key]
        if kind == "parameters" and (child is None or child.phase == "Skipped"):
            # Argo fills a skipped task's outputs with their valueFrom.default
            tmpl = self.templates[task.spec["template"]][0]
            for p in (tmpl.get("outputs") or {}).get("parameters") or []:
                if p["name"] == key and "default" in (p.get("valueFrom") or {}):
                    return _as_str(p["valueFrom"]["default"])
        phase = child.phase if child is not None else task.phase
        raise _Unresolved(f"task '{task.name}' ({phase}) has no output {kind[:-1]} '{key}'")

    def _expand(self, task: _Task) -> None:
        dag, spec = task.dag, task.spec
        tmpl, tpath = self.templates[spec["template"]]
        allowed = ancestors(dag.deps, task.name)
        lookup = self._dag_lookup(dag, allowed, _NO_ITEM)
        items: list[Any] = [_NO_ITEM]
        if "withItems" in spec:
            items, task.fanout = _subst(spec["withItems"], lookup, f"{task.path}.withItems"), True
        elif "withParam" in spec:
            text = _subst(str(spec["withParam"]), lookup, f"{task.path}.withParam")
            try:
                items = json.loads(text)
            except ValueError:
                items = None
            if not isinstance(items, list):
                raise _TaskError(f"{task.path}.withParam: not a JSON list: {text[:200]!r}")
            task.fanout = True
        if task.fanout and not items:
            self._decide(task, "Skipped", "Skipped, empty params")
            return
        for i, item in enumerate(items):
            cid = f"{task.id}.{i}" if task.fanout else task.id
            ilookup = self._dag_lookup(dag, allowed, item)
            if spec.get("when"):
                text = _subst(str(spec["when"]), ilookup, f"{task.path}.when")
                try:
                    run = eval_when(text)
                except ValueError as e:
                    raise _TaskError(f"{task.path}.when: {e} (after substitution: {text!r})") from None
                if not run:
                    skipped = _Node(cid, task, tmpl, tpath, {}, {}, self.out / "nodes" / cid,
                                    item=None if item is _NO_ITEM else item, phase="Skipped",
                                    message=f"when \"{text}\" evaluated false")
                    task.children.append(skipped)
                    self.rows.append(skipped)
                    self.display.event(cid, "Skipped", skipped.message)
                    continue
            args = spec.get("arguments") or {}
            params = {p["name"]: _as_str(_subst(p.get("value", ""), ilookup, f"{task.path}.arguments.parameters[{j}].value"))
                      for j, p in enumerate(args.get("parameters") or [])}
            arts: dict[str, Path | None] = {}
            for j, a in enumerate(args.get("artifacts") or []):
                where = f"{task.path}.arguments.artifacts[{j}]"
                if "from" in a:
                    try:
                        arts[a["name"]] = Path(_subst(str(a["from"]), ilookup, f"{where}.from"))
                    except _TaskError:
                        if not a.get("optional"):
                            raise
                        arts[a["name"]] = None
                elif "raw" in a:
                    arts[a["name"]] = self._write_raw(cid, a["name"], _subst(str(a["raw"].get("data", "")), ilookup, f"{where}.raw.data"))
            inputs, in_arts = self._bind_inputs(tmpl, tpath, params, arts, task.path, cid)
            if "dag" in tmpl:
                child = self._new_dag(cid, tmpl, tpath, inputs, in_arts, task)
            else:
                child = self._new_node(cid, task, tmpl, tpath, inputs, in_arts, None if item is _NO_ITEM else item)
            task.children.append(child)

    def _write_raw(self, cid: str, name: str, data: str) -> Path:
        path = self.out / "nodes" / cid / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data)
        return path

    def _bind_inputs(self, tmpl: dict, tpath: str, params: dict, arts: dict, where: str, cid: str):
        inputs: dict[str, str] = {}
        declared = (tmpl.get("inputs") or {})
        for p in declared.get("parameters") or []:
            name = p["name"]
            if name in params:
                value = params[name]
            elif "value" in p:
                value = _as_str(p["value"])
            elif "default" in p:
                value = _as_str(p["default"])
            else:
                raise _TaskError(f"{where}: template '{tmpl['name']}' needs input parameter '{name}', which is not passed")
            enum = [_as_str(e) for e in p.get("enum") or []]
            if enum and value not in enum:
                raise _TaskError(f"{where}: input parameter '{name}'={value!r} of template '{tmpl['name']}' is not one of {', '.join(enum)}")
            inputs[name] = value
        in_arts: dict[str, Path | None] = {}
        lookup = lambda n: inputs[n[18:]] if n.startswith("inputs.parameters.") and n[18:] in inputs else self._workflow_var(n)  # noqa: E731
        for j, a in enumerate(declared.get("artifacts") or []):
            name = a["name"]
            if arts.get(name) is not None:
                if not arts[name].exists() and not a.get("optional"):
                    raise _TaskError(f"{where}: input artifact '{name}' of template '{tmpl['name']}' does not exist at {arts[name]}")
                in_arts[name] = arts[name]
            elif "raw" in a:
                in_arts[name] = self._write_raw(cid, name, _subst(str(a["raw"].get("data", "")), lookup, f"{tpath}.inputs.artifacts"))
            elif (a.get("s3") or {}).get("key") not in (None, ""):
                kpath = f"{tpath}.inputs.artifacts[{j}].s3.key"
                key = _subst(str(a["s3"]["key"]), lookup, kpath)
                local = self._s3_path(key, kpath)
                if local.exists():
                    in_arts[name] = local
                elif a.get("optional"):
                    in_arts[name] = None
                else:
                    raise _TaskError(f"{where}: input artifact '{name}' of template '{tmpl['name']}' reads key {key!r}, "
                                     f"but nothing is at {local}: no node has written that key to this run folder "
                                     "(mark the input optional: true if it may be absent)")
            elif a.get("optional"):
                in_arts[name] = None
            else:
                raise _TaskError(f"{where}: template '{tmpl['name']}' needs input artifact '{name}', which is not passed")
        return inputs, in_arts

    def _s3_path(self, key: str, where: str) -> Path:
        """The local place of a key in the workflow's default artifact repository: <out>/s3/<key>."""
        parts = [p for p in key.split("/") if p not in ("", ".")]
        if key.startswith("/") or ".." in parts or not parts or not key.strip():
            raise _TaskError(f"{where}: key {key!r} must be relative and must not contain '..': it names a place "
                             f"in the workflow's artifact repository (locally {self.out / 's3'}/<key>)")
        return self.out.joinpath("s3", *parts)

    def _stale(self, path: Path) -> bool:
        """Whether an input artifact was (partly) produced anew in this run, so its consumer must re-run."""
        return any(path.is_relative_to(d) or d.is_relative_to(path) for d in self.fresh)

    def _new_node(self, cid: str, task: _Task, tmpl: dict, tpath: str, inputs: dict, in_arts: dict, item: Any) -> _Node:
        node = _Node(cid, task, tmpl, tpath, inputs, in_arts, self.out / "nodes" / cid, item=item,
                     daemon=bool(tmpl.get("daemon")))
        self.rows.append(node)
        status = _read_json(node.dir / "status.json") or {}
        arts_key = {k: str(v) if v else None for k, v in in_arts.items()}
        if node.daemon and task.keep_daemon_down:
            node.phase, node.reused = "Succeeded", True
            node.message = "not restarted: it and every task after it already succeeded"
        elif (not node.daemon and status.get("phase") == "Succeeded" and status.get("inputs") == inputs
              and status.get("in_artifacts") == arts_key
              and not any(p is not None and self._stale(p) for p in in_arts.values())
              and all(Path(p).exists() for p in (status.get("outputs") or {}).get("artifacts", {}).values())):
            node.phase, node.reused, node.message = "Succeeded", True, "reused from an earlier run"
            node.recorded = status
            node.outputs = status.get("outputs") or node.outputs
            node.attempts, node.exit_code = status.get("attempts", 1), status.get("exit_code")
        else:
            self.queue.append(node)
            return node
        self.display.event(cid, "Succeeded", node.message)
        return node

    # -- starting and watching processes ---------------------------------------------------------

    def _dag_chain(self, node: _Node):
        """(DAG, its child that holds `node`) from the node's own DAG up to the entrypoint."""
        child, dag = node, node.task.dag
        while dag is not None:
            yield dag, child
            child, dag = dag, dag.parent.dag if dag.parent is not None else None

    def _active(self, child: _Node | _Dag) -> bool:
        """Whether a DAG's child holds one of the DAG's parallelism slots."""
        if isinstance(child, _Node):
            return child.proc is not None
        # a nested DAG keeps its slot between its nodes, and until its stopped daemons have exited
        return (child.started and child.phase == "Running") or any(
            self._active(c) for t in child.tasks.values() for c in t.children)

    def _locks(self, node: _Node) -> list[tuple[str, int]]:
        sync = node.tmpl.get("synchronization") or {}
        locks = []
        for s in sync.get("semaphores") or []:
            ref = s["configMapKeyRef"]
            key = f"{ref['name']}/{ref['key']}"
            locks.append((key, int(self.sem_limits.get(key, self.sem_limits.get(ref["key"], 1)))))
        for m in sync.get("mutexes") or []:
            locks.append((f"mutex/{m['name']}", 1))
        return locks

    def _start_ready(self) -> None:
        now = time.monotonic()
        active: dict[_Dag, set] = {}  # DAG with parallelism -> its children that hold a slot, this tick
        for node in list(self.queue):
            if node.retry_at is not None and now < node.retry_at:
                continue
            if not node.daemon and sum(1 for n in self.running if not n.daemon and not n.stopping) >= self.parallelism:
                continue
            chain = list(self._dag_chain(node))
            full = False
            for dag, child in chain:
                if dag.tmpl.get("parallelism"):
                    if dag not in active:
                        active[dag] = {c for t in dag.tasks.values() for c in t.children if self._active(c)}
                    full = full or (child not in active[dag] and len(active[dag]) >= int(dag.tmpl["parallelism"]))
            if full:
                continue
            locks = self._locks(node)
            if any(self.held.get(k, 0) >= limit for k, limit in locks):
                continue
            for k, _ in locks:
                self.held[k] = self.held.get(k, 0) + 1
            node.locks = [k for k, _ in locks]
            for dag, child in chain:
                dag.started = True
                active.get(dag, set()).add(child)
            self.queue.remove(node)
            self._launch(node)

    def _release(self, node: _Node) -> None:
        for k in node.locks:
            self.held[k] -= 1
        node.locks = []

    def _launch(self, node: _Node) -> None:
        node.attempts += 1
        now = time.monotonic()
        if node.attempts == 1:
            node.started, node.t_first = time.time(), now
        node.t_attempt, node.retry_at, node.kill_reason, node.kill_at = now, None, None, None
        node.dir.mkdir(parents=True, exist_ok=True)
        self.fresh.add(node.dir)
        shutil.rmtree(node.dir / "params", ignore_errors=True)
        (node.dir / "params").mkdir()
        (node.dir / "artifacts").mkdir(exist_ok=True)
        log_path = node.dir / "log.txt"
        try:
            argv, shown, env, cwd = self._prepare(node)
        except (_TaskError, WorkflowError) as e:
            self._attempt_done(node, "Error", str(e))
            return
        with open(log_path, "ab") as log:
            log.write(f"=== attempt {node.attempts} at {_iso(time.time())}: {' '.join(shown)}\n".encode())
            log.flush()
            node.log_start = node.stream_pos = log.tell()
            self.starting = True
            try:
                node.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
                self.running.append(node)
            except OSError as e:
                self._attempt_done(node, "Error", f"cannot start {argv[0]!r}: {e}")
                return
            finally:
                self.starting = False
                if self.pending_signal is not None:
                    raise KeyboardInterrupt(signal.Signals(self.pending_signal).name)
        node.phase, node.message = "Running", ""
        self.display.event(node.id, "Running", f"attempt {node.attempts}" if node.attempts > 1 else "")

    def _prepare(self, node: _Node) -> tuple[list[str], list[str], dict[str, str], str | None]:
        """argv to run, argv to show (before $(VAR) expansion: no secrets), env and cwd of an attempt."""
        tmpl, tp = node.tmpl, node.tpath
        base = self._container_lookup(node, {})
        if tmpl.get("podSpecPatch") not in (None, ""):
            self._check_pod_spec_patch(_subst(tmpl["podSpecPatch"], base, f"{tp}.podSpecPatch"), f"{tp}.podSpecPatch")
        container = tmpl["container"]
        mapping: list[tuple[str, Path]] = []

        def through(cpath: str) -> Path | None:
            for c, local in sorted(mapping, key=lambda m: -len(m[0])):
                if cpath == c:
                    return local
                if cpath.startswith(c.rstrip("/") + "/"):
                    return local / cpath[len(c.rstrip("/")) + 1:]
            return None

        template_volumes = {v["name"]: v for v in tmpl.get("volumes") or []}
        for j, m in enumerate(container.get("volumeMounts") or []):
            m = _subst(m, base, f"{tp}.container.volumeMounts[{j}]")
            local = self._volume_dir(m["name"], node, template_volumes, f"{tp}.container.volumeMounts[{j}].name")
            local = local / m["subPath"] if m.get("subPath") else local
            local.mkdir(parents=True, exist_ok=True)
            mapping.append((m["mountPath"], local))
        paths: dict[str, str] = {}
        for j, a in enumerate((tmpl.get("inputs") or {}).get("artifacts") or []):
            cpath = _subst(a["path"], base, f"{tp}.inputs.artifacts[{j}].path")
            local = node.in_arts.get(a["name"]) or node.dir / "inputs" / a["name"]  # absent optional: never created
            mapping.append((cpath, local))
            paths[f"inputs.artifacts.{a['name']}.path"] = str(local)
        outs = tmpl.get("outputs") or {}
        node.art_paths, node.param_paths = {}, {}
        for kind, folder, store in (("artifacts", "artifacts", node.art_paths), ("parameters", "params", node.param_paths)):
            added = []
            for j, o in enumerate(outs.get(kind) or []):
                cpath = _subst(o["path"] if kind == "artifacts" else o["valueFrom"]["path"], base,
                               f"{tp}.outputs.{kind}[{j}]")
                key = (o.get("s3") or {}).get("key") if kind == "artifacts" else None
                if key not in (None, ""):
                    kpath = f"{tp}.outputs.artifacts[{j}].s3.key"
                    inside, local = None, self._s3_path(_subst(str(key), base, kpath), kpath)
                    local.parent.mkdir(parents=True, exist_ok=True)
                    self.fresh.add(local)  # written anew: readers of it (or of a prefix of it) re-run too
                else:
                    inside = through(cpath)
                    local = inside or node.dir / folder / o["name"]
                store[o["name"]] = (cpath, local)
                paths[f"outputs.{kind}.{o['name']}.path"] = str(local)
                if inside is None:
                    added.append((cpath, local))
            mapping.extend(added)
        lookup = self._container_lookup(node, paths)
        container = _subst(container, lookup, f"{tp}.container")
        ordered = sorted(mapping, key=lambda m: -len(m[0]))

        def rewrite(s: str) -> str:
            for c, local in ordered:
                c = c.rstrip("/") or "/"
                if s == c:
                    return str(local)
                if c != "/" and s.startswith(c + "/"):
                    return str(local) + s[len(c):]
            return s

        shown = [rewrite(_as_str(x)) for x in (container.get("command") or []) + (container.get("args") or [])]
        if shown and shown[0] in ("python", "python3"):
            shown[0] = sys.executable
        env, defined = dict(os.environ), {}
        for e in container.get("env") or []:
            if "valueFrom" in e:
                if e["name"] in os.environ:
                    defined[e["name"]] = os.environ[e["name"]]
                else:
                    env.pop(e["name"], None)  # the secret's local stand-in is the same-named variable
            else:
                defined[e["name"]] = env[e["name"]] = _k8s_expand(rewrite(_as_str(e.get("value", ""))), defined)
        argv = [_k8s_expand(a, defined) for a in shown]  # Kubernetes expands $(VAR) in command/args
        env["ARGO_PROGRESS_FILE"] = str(node.dir / "progress")
        env["KUBELLM_LOCAL_RUN"] = "1"
        env.setdefault("PYTHONUNBUFFERED", "1")
        cwd = None
        if container.get("workingDir"):
            wd = rewrite(container["workingDir"])
            if not Path(wd).is_dir():
                raise _TaskError(f"{tp}.container.workingDir: {container['workingDir']} is neither a mounted volume "
                                 "nor a folder on this machine")
            cwd = wd
        deadlines = []
        for key in ("activeDeadlineSeconds", "timeout"):
            if tmpl.get(key) not in (None, ""):
                deadlines.append(_seconds(_subst(tmpl[key], lookup, f"{tp}.{key}"), f"{tp}.{key}"))
        node.deadline = node.t_attempt + min(deadlines) if deadlines else None
        if node.daemon:
            node.ready, node.probe_fails = False, 0
            node.probe = container.get("readinessProbe")
            delay = float((node.probe or {}).get("initialDelaySeconds") or 0)
            node.probe_next = node.t_attempt + delay
            node.ready_by = node.t_attempt + (min(deadlines) if deadlines else DAEMON_READY_CAP_S)
        return argv, shown, env, cwd

    @staticmethod
    def _check_pod_spec_patch(text: str, where: str) -> None:
        """Accept a podSpecPatch that only places the pod; anything else changes what runs."""
        try:
            patch = json.loads(text)
        except ValueError as json_error:
            try:
                patch = yaml.safe_load(text)
            except yaml.YAMLError as e:
                detail = " ".join(str(e).split())
                raise _TaskError(f"{where}: does not parse as JSON ({json_error}) or YAML ({detail}) after "
                                 f"substitution: {text[:300]!r}") from None
        if patch is None:
            return
        if not isinstance(patch, dict):
            raise _TaskError(f"{where}: must be a mapping of pod spec fields, got {type(patch).__name__} "
                             f"after substitution: {text[:300]!r}")
        other = sorted(str(k) for k in patch if k not in PLACEMENT_PATCH_KEYS)
        if other:
            raise _TaskError(f"{where}: sets {', '.join(other)}, which changes what runs; the local runner only "
                             f"ignores a patch that places the pod ({', '.join(sorted(PLACEMENT_PATCH_KEYS))})")

    def _container_lookup(self, node: _Node, paths: dict[str, str]) -> Callable[[str], str]:
        def lookup(name: str) -> str:
            if name in paths:
                return paths[name]
            if name.startswith("inputs.parameters.") and name[18:] in node.inputs:
                return node.inputs[name[18:]]
            if name == "pod.name":
                return f"{self.name}-{re.sub(r'[^a-z0-9-]+', '-', node.id.lower())}"
            if name == "retries":
                return str(node.attempts - 1)
            if name.endswith(".path") and name.startswith(("inputs.artifacts.", "outputs.")):
                raise _Unresolved("a path variable cannot be used inside another path")
            return self._workflow_var(name)

        return lookup

    def _volume_dir(self, name: str, node: _Node, template_volumes: dict, where: str) -> Path:
        source = template_volumes.get(name) or self.volume_sources.get(name)
        if source is None:
            raise _TaskError(f"{where}: no volume named '{name}' (volumes are {', '.join(self.volume_sources) or 'none'})")
        if name in self.volume_given:
            return self.volume_given[name]
        if "emptyDir" in source:
            return node.dir / "volumes" / name  # an emptyDir lives as long as its pod
        return self.out / "volumes" / name

    def _poll(self) -> None:
        for node in list(self.running):
            now = time.monotonic()
            rc = node.proc.poll()
            if rc is None:
                if node.kill_at is not None and now >= node.kill_at:
                    _killpg(node.proc.pid, signal.SIGKILL)
                elif node.deadline is not None and now >= node.deadline and node.kill_reason is None:
                    self._stop(node, KILL_GRACE_S, f"activeDeadlineSeconds exceeded after {now - node.t_attempt:.1f}s (killed)")
                elif node.daemon and not node.ready and not node.stopping:
                    self._probe(node, now)
                continue
            _killpg(node.proc.pid, signal.SIGKILL)  # leftovers of the group die with the main process
            self._stream(node, final=True)
            self.running.remove(node)
            node.proc, node.exit_code = None, rc
            if not (node.daemon and node.ready):
                node.intervals.append((node.t_attempt, now))
            if node.stopping:
                self._attempt_done(node, "Succeeded", "stopped when its DAG finished")
            elif node.kill_reason is not None:
                tail = _tail(node.dir / "log.txt", node.log_start, 20) if node.daemon else ""
                self._attempt_done(node, "Failed", node.kill_reason + (f"; log tail:\n{tail}" if tail else ""))
            elif node.daemon and not node.ready:
                tail = _tail(node.dir / "log.txt", node.log_start, 20)
                self._attempt_done(node, "Failed", f"daemon exited (code {rc}) before it was ready; log tail:\n{tail}")
            elif rc != 0:
                self._attempt_done(node, "Failed", f"exit code {rc}")
            else:
                problems = self._collect_outputs(node)
                self._attempt_done(node, "Error" if problems else "Succeeded", "; ".join(problems))

    def _probe(self, node: _Node, now: float) -> None:
        if now < node.probe_next:
            return
        probe = node.probe
        ok = True
        if probe:
            get = probe["httpGet"]
            try:
                conn = http.client.HTTPConnection("127.0.0.1", int(get["port"]), timeout=float(probe.get("timeoutSeconds") or 1))
                conn.request("GET", get.get("path") or "/")
                ok = 200 <= conn.getresponse().status < 400
                conn.close()
            except (OSError, http.client.HTTPException):
                ok = False
        if ok:
            node.ready = True
            node.intervals.append((node.t_attempt, now))  # start-up counts as work, serving does not
            self.display.event(node.id, "Running", "ready (daemoned)")
            return
        node.probe_fails += 1
        node.probe_next = now + float(probe.get("periodSeconds") or 10)
        threshold = probe.get("failureThreshold")
        if (threshold and node.probe_fails >= int(threshold)) or now >= node.ready_by:
            self._stop(node, KILL_GRACE_S, f"daemon not ready after {now - node.t_attempt:.1f}s "
                                           f"({node.probe_fails} failed readiness probes on port {probe['httpGet']['port']})")

    def _stop(self, node: _Node, grace: float, reason: str | None = None) -> None:
        """SIGTERM the node's process group; SIGKILL after `grace` seconds. No reason: a normal stop."""
        if node.proc is None:
            return
        if reason:
            node.kill_reason = reason
        else:
            node.stopping = True
        _killpg(node.proc.pid, signal.SIGTERM)
        node.kill_at = time.monotonic() + grace

    def _collect_outputs(self, node: _Node) -> list[str]:
        problems = []
        params, arts = {}, {}
        for p in (node.tmpl.get("outputs") or {}).get("parameters") or []:
            cpath, local = node.param_paths[p["name"]]
            if local.is_file():
                text = local.read_text(errors="replace")
                params[p["name"]] = text[:-1] if text.endswith("\n") else text  # Argo trims one newline
            elif "default" in p["valueFrom"]:
                params[p["name"]] = _as_str(p["valueFrom"]["default"])
            else:
                problems.append(f"output parameter '{p['name']}': {cpath} was not written (local {local})")
        for a in (node.tmpl.get("outputs") or {}).get("artifacts") or []:
            cpath, local = node.art_paths[a["name"]]
            if local.exists():
                arts[a["name"]] = str(local)
            elif not a.get("optional"):
                problems.append(f"output artifact '{a['name']}': nothing at {cpath} (local {local}); "
                                "write it there or mark it optional: true")
        node.outputs = {"parameters": params, "artifacts": arts}
        return problems

    def _attempt_done(self, node: _Node, phase: str, message: str) -> None:
        self._release(node)
        node.stopping = False
        if phase in FAILED:
            wait = self._retry_wait(node, phase)
            if isinstance(wait, float):
                node.phase, node.retry_at = "Pending", time.monotonic() + wait
                node.message = f"attempt {node.attempts} {phase.lower()}: {message.splitlines()[0] if message else ''}; retrying in {wait:.1f}s"
                self.queue.append(node)
                self.display.event(node.id, "Pending", node.message)
                return
            if wait:
                message = f"{message} ({wait})"
        node.phase, node.message, node.finished = phase, message, time.time()
        self.changed = True
        if node.attempts:
            _atomic_json(node.dir / "status.json", self._status(node))
        if phase in FAILED:
            self.failures.append(node)
        self.display.event(node.id, phase, message if phase != "Succeeded" else f"{node.finished - node.started:.1f}s")
        self._settle(node.task)

    def _retry_wait(self, node: _Node, phase: str) -> float | str | None:
        """Seconds to wait before the next attempt; None or a reason string: no more attempts."""
        rs = node.tmpl.get("retryStrategy")
        if not rs:
            return None
        lookup = self._container_lookup(node, {})
        where = f"{node.tpath}.retryStrategy"
        limit = rs.get("limit")
        if limit not in (None, "") and node.attempts - 1 >= int(_subst(_as_str(limit), lookup, f"{where}.limit")):
            return None
        policy = rs.get("retryPolicy") or "OnFailure"
        if not (policy == "Always" or (policy == "OnFailure" and phase == "Failed") or (policy == "OnError" and phase == "Error")):
            return None
        backoff = rs.get("backoff") or {}
        wait = _seconds(_subst(_as_str(backoff.get("duration", 0)), lookup, where), f"{where}.backoff.duration")
        factor = backoff.get("factor")
        if factor not in (None, "") and float(_subst(_as_str(factor), lookup, where)) > 0:
            wait *= float(_subst(_as_str(factor), lookup, where)) ** (node.attempts - 1)
        if backoff.get("cap"):
            wait = min(wait, _seconds(backoff["cap"], f"{where}.backoff.cap"))
        if backoff.get("maxDuration"):
            limit_s = _seconds(_subst(_as_str(backoff["maxDuration"]), lookup, where), f"{where}.backoff.maxDuration")
            elapsed = time.monotonic() - node.t_first
            if elapsed >= limit_s:
                return "retry maxDuration exceeded"
            if elapsed + wait > limit_s:
                return "the next backoff would exceed retry maxDuration"
        return float(wait)

    def _status(self, node: _Node) -> dict:
        return {
            "id": node.id, "task": node.task.name, "template": node.tmpl.get("name"), "phase": node.phase,
            "message": node.message, "item": node.item, "daemon": node.daemon, "inputs": node.inputs,
            "in_artifacts": {k: str(v) if v else None for k, v in node.in_arts.items()},
            "outputs": node.outputs, "started": _iso(node.started), "finished": _iso(node.finished),
            "duration_s": round(node.finished - node.started, 3) if node.started and node.finished else 0.0,
            "busy_s": round(sum(b - a for a, b in node.intervals), 3), "attempts": node.attempts,
            "exit_code": node.exit_code, "log": str(node.dir / "log.txt"),
        }

    def _check_stall(self) -> None:
        if self.changed or any(n.retry_at is not None for n in self.queue):
            return
        # a ready daemon only serves: if nothing else runs and the queue cannot move (a DAG's parallelism
        # slot or a semaphore held by the daemon), nothing ever will
        serving = all(n.daemon and n.ready and not n.stopping and n.deadline is None for n in self.running)
        if self.running and not (serving and self.queue):
            return
        if self.queue:
            raise WorkflowError(f"nodes {', '.join(n.id for n in self.queue)} can never start: check the semaphore "
                                f"limits ({self.sem_limits or 'all 1'}), parallelism ({self.parallelism}) and the "
                                "parallelism of DAG templates (running daemons hold their DAG's slots)")
        raise RuntimeError(f"local runner stalled with the entrypoint still running (internal error); see {self.out}")

    def _kill_all(self) -> None:
        for node in self.running:
            _killpg(node.proc.pid, signal.SIGTERM)
        end = time.monotonic() + KILL_GRACE_S
        try:
            while any(n.proc.poll() is None for n in self.running) and time.monotonic() < end:
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: no more waiting
        for node in self.running:
            _killpg(node.proc.pid, signal.SIGKILL)
            try:
                node.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            node.phase, node.message = "Failed", "interrupted"
        self.running = []

    def _stream(self, node: _Node | None = None, final: bool = False) -> None:
        """Print new complete log lines of running nodes (all that is left of `node` when final)."""
        if not self.stream_logs:
            return
        for n in [node] if node is not None else self.running:
            try:
                with open(n.dir / "log.txt", "rb") as f:
                    f.seek(n.stream_pos)
                    data = f.read()
            except OSError:
                continue
            end = len(data) if final else data.rfind(b"\n") + 1
            n.stream_pos += end
            for line in data[:end].decode("utf-8", "replace").splitlines():
                self.display.say(f"[{n.id}] {line}")

    # -- reporting -------------------------------------------------------------------------------

    def _live_rows(self) -> list[tuple[str, str, str, str]]:
        rows = []
        now = time.monotonic()
        for r in self.rows:
            if isinstance(r, _Task):
                rows.append((r.id, r.phase or "", "", ""))
                continue
            progress = ""
            if r.phase == "Running":
                try:
                    progress = (r.dir / "progress").read_text().strip()[:20]
                except OSError:
                    pass
            elapsed = now - r.t_first if r.started and r.phase not in TERMINAL else (
                (r.finished - r.started) if r.finished and r.started else 0.0)
            label = r.phase + (" (reused)" if r.reused else "") + (" (ready)" if r.daemon and r.ready and r.phase == "Running" else "")
            rows.append((r.id, label, progress, f"{elapsed:.1f}s" if elapsed else ""))
        return rows

    def _summarize(self, interrupted: bool = False) -> RunResult:
        wall = time.monotonic() - self.t0
        spans = sorted(s for r in self.rows if isinstance(r, _Node) for s in r.intervals)
        covered, end = 0.0, -math.inf
        for a, b in spans:  # union of the spans in which some node process did useful work
            if b > end:
                covered += b - max(a, end)
                end = b
        nodes: dict[str, dict] = {}
        for r in self.rows:
            if isinstance(r, _Task):
                nodes[r.id] = {"id": r.id, "task": r.name, "phase": r.phase, "message": r.message, "attempts": 0,
                               "duration_s": 0.0, "outputs": {"parameters": {}, "artifacts": {}}}
            else:
                nodes[r.id] = (r.recorded or self._status(r)) | {"reused": r.reused}
        root = getattr(self, "root", None)
        ok = not interrupted and root is not None and root.phase == "Succeeded"
        failed = next((f for f in self.failures), None) if not ok else None
        failed_id = failed.id if failed is not None else None
        tail = _tail(failed.dir / "log.txt", failed.log_start) if isinstance(failed, _Node) else ""
        message = "interrupted" if interrupted else (root.message if root is not None else "")
        if failed is not None and not interrupted:
            message = f"{failed.id}: {failed.message}"
        result = RunResult("Succeeded" if ok else "Failed", nodes, round(wall, 3), round(max(wall - covered, 0.0), 3),
                           self.out, failed_id, tail, message)
        _atomic_json(self.out / "run.json", {
            "workflow": self.name, "uid": self.uid, "phase": result.phase, "message": message,
            "started": _iso(self.started), "finished": _iso(time.time()), "wall_s": result.wall_s,
            "node_s": round(covered, 3), "overhead_s": result.overhead_s, "parallelism": self.parallelism,
            "parameters": self.params, "failed_node": failed_id,
            "nodes": {k: {"phase": v["phase"], "attempts": v.get("attempts", 0), "duration_s": v.get("duration_s", 0.0),
                          "busy_s": v.get("busy_s", 0.0), "reused": v.get("reused", False)} for k, v in nodes.items()},
        })
        self._print_summary(result)
        return result

    def _print_summary(self, result: RunResult) -> None:
        from rich.table import Table

        table = Table(title=f"{self.name}: {result.phase} in {result.wall_s:.1f}s "
                            f"(runner overhead {result.overhead_s:.1f}s)", title_justify="left")
        for col in ("node", "phase", "attempts", "duration", "outputs"):
            table.add_column(col, overflow="fold")
        for nid, st in result.nodes.items():
            outs = st.get("outputs") or {}
            shown = [f"{k}={v if len(v) <= 40 else v[:37] + '...'}" for k, v in (outs.get("parameters") or {}).items()]
            shown += [f"{k}/" for k in outs.get("artifacts") or {}]
            phase = st["phase"] + (" (reused)" if st.get("reused") else "")
            table.add_row(nid, phase, str(st.get("attempts", 0)), f"{st.get('duration_s', 0.0):.1f}s", " ".join(shown))
        self.display.console.print(table)
        if result.phase != "Succeeded":
            self.display.say(f"failed: {result.message}", "red")
            if result.log_tail:
                self.display.say(f"last lines of {result.out / 'nodes' / str(result.failed_node) / 'log.txt'}:\n{result.log_tail}")
            self.display.say(f"fix it and run the same command again: finished nodes are reused from {result.out}")


class _NoItem:
    def __repr__(self) -> str:
        return "<no item>"


_NO_ITEM = _NoItem()


def _diff(a: Any, b: Any, path: str) -> list[str]:
    """Field paths where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _diff(a.get(k), b.get(k), f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    if a != b:
        short = lambda v: (s if len(s := json.dumps(v)) <= 60 else s[:57] + "...")  # noqa: E731
        return [f"{path}: {short(a)} -> {short(b)}"]
    return []


# ---------------------------------------------------------------------------------------------
# Public entry points


def load_workflow(path: str | Path) -> dict:
    """The single Workflow document in a YAML file."""
    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except yaml.YAMLError as e:
        raise WorkflowError(f"{path}: not valid YAML: {e}") from e
    if len(docs) != 1:
        raise WorkflowError(f"{path}: expected one Workflow document, found {len(docs)}")
    return docs[0]


def run_workflow(doc: dict, out: Path, parameters: dict[str, str] | None = None,
                 volumes: dict[str, Path] | None = None, jobs: int | None = None,
                 semaphore_limits: dict[str, int] | None = None, console: Any = None,
                 stream_logs: bool = False) -> RunResult:
    """Execute a rendered Workflow with local processes; `out` is the run folder (see module doc).

    parameters: overrides of spec.arguments.parameters. volumes: volume name -> local folder.
    jobs: max concurrent non-daemon nodes (default spec.parallelism, else 1).
    semaphore_limits: "configmap/key" (or "key") -> limit (default 1).
    Raises WorkflowError before anything runs when the workflow cannot run locally.
    """
    run = _Run(doc, Path(out), {k: _as_str(v) for k, v in (parameters or {}).items()}, volumes or {}, jobs,
               semaphore_limits or {}, console, stream_logs)
    return run.execute()


def run_file(path: str | Path, out: Path, **kwargs: Any) -> RunResult:
    """load_workflow + run_workflow."""
    return run_workflow(load_workflow(path), out, **kwargs)
