"""The orchestrator: walks the DAG as Argo would, decides tasks, schedules and launches nodes, records them.

The pieces it drives live next to it: binding (variables, artifacts, outputs), container (argv, env,
paths of an attempt), processes (start, watch, stop), graph (when a task may be decided), state (the
run folder), display (what the user sees).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from workflows.refs import ancestors, dag_dependencies
from workflows.argo import conditions
from workflows.runner.binding import Binder
from workflows.runner.container import Containers, inherited_env
from workflows.runner.localcluster import LocalCluster, read_manifest
from workflows.runner.display import Display
from workflows.runner.errors import TaskError, WorkflowError
from workflows.runner.expressions import as_str, eval_when, evaluate, subst
from workflows.runner.folderlock import folder_lock
from workflows.runner.graph import dag_phase, fulfilled, results_of, task_phase
from workflows.runner.processes import DAEMON_STOP_GRACE_S, POLL_S, Processes, retry_wait, tail
from workflows.runner.state import (
    FAILED, NO_ITEM, Dag, Node, RunResult, Task, atomic_json, check_resume, iso, node_status, read_json,
    resolve_parameters,
)
from workflows.runner.supported import preflight

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # each stops the run as Ctrl-C does
MAX_INVOCATIONS = 100  # run.json keeps the latest this many invocations of a run
INVOCATION_KEYS = ("started", "finished", "wall_s", "phase", "message")


class Run:
    def __init__(self, doc: dict, out: Path, parameters: dict[str, str], volumes: dict[str, Path],
                 jobs: int | None, semaphore_limits: dict[str, int], console: Any, stream_logs: bool,
                 cluster: Path | None = None) -> None:
        preflight(doc, volumes)
        self.spec = json.loads(json.dumps(doc["spec"], default=str))  # plain JSON types, also for the resume check
        self.templates = {t["name"]: (t, f"spec.templates[{i}]") for i, t in enumerate(self.spec["templates"])}
        self.out = Path(out).resolve()
        self.name = re.sub(r"[^a-z0-9-]+", "-", self.out.name.lower()).strip("-") or "workflow"
        self.params = resolve_parameters(self.spec, parameters, self.name)
        self.parallelism = int(jobs or self.spec.get("parallelism") or 1)
        self.sem_limits = semaphore_limits
        volume_sources = {v["name"]: v for v in self.spec.get("volumes") or []}
        volume_sources |= {c["metadata"]["name"]: {"persistentVolumeClaim": {}} for c in self.spec.get("volumeClaimTemplates") or []}
        self.console, self.stream_logs = console, stream_logs
        self.uid = check_resume(self.out, self.name, self.params, self.spec)
        self.binder = Binder(self.out, self.name, self.uid, self.params, self.templates)
        given = {name: Path(folder).resolve() for name, folder in volumes.items()}
        self.containers = Containers(self.binder, volume_sources, given)
        claims = {v["persistentVolumeClaim"]["claimName"]: given.get(n) or self.out / "volumes" / n
                  for n, v in volume_sources.items() if (v.get("persistentVolumeClaim") or {}).get("claimName")}
        self.cluster = LocalCluster(Path(cluster).resolve() if cluster else self.out / "cluster", claims,
                                    inherited_env(os.environ))
        self.containers.endpoints = self.cluster.root / "endpoints.json"
        self.waiting: list[Node] = []  # resource nodes waiting for their object's conditions
        self.queue: list[Node] = []
        self.held: dict[str, int] = {}
        self.rows: list[Any] = []  # Node and skipped/omitted Task, in order of appearance
        self.failures: list[Any] = []
        self.changed = False

    # -- main loop -----------------------------------------------------------------------------

    def execute(self) -> RunResult:
        self.display = Display(self.console)
        self.procs = Processes(self.display, self.stream_logs)
        self.t0, self.started = time.monotonic(), time.time()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            # SIGHUP: the terminal that ran `kubellm run` closed; its nodes (each in a session of its own)
            # would otherwise outlive it, a model server holding its memory and port
            previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        interrupted = None
        try:
            self.root = self._start_entry()
            while True:
                self._poll()
                self._advance_all()
                self._start_ready()
                self.procs.stream()
                if self.display.live is not None:
                    self.display.refresh(self.rows)
                if self.root.phase != "Running" and not self.procs.running:
                    break
                self._check_stall()
                time.sleep(POLL_S)
        except BaseException as e:
            interrupted = e
            self.procs.kill_all()
        finally:
            self.display.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if interrupted is not None:
            self._summarize(interrupted=True)
            raise interrupted
        return self._summarize()

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Ctrl-C, SIGTERM or SIGHUP: stop everything cleanly, but never between fork and bookkeeping
        if self.procs.starting:
            self.procs.pending_signal = signum
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def _start_entry(self) -> Dag:
        entry = self.spec["entrypoint"]
        tmpl, tpath = self.templates[entry]
        if "dag" in tmpl:
            try:
                inputs, in_arts = self.binder.bind_inputs(tmpl, tpath, dict(self.params), {}, "spec.entrypoint", "")
            except TaskError as e:
                raise WorkflowError(str(e)) from None
            return self._new_dag("", tmpl, tpath, inputs, in_arts, None)
        # a single container entrypoint: run it as the only task of an implicit DAG
        wrapper = {"name": "(entrypoint)", "dag": {"tasks": [{"name": entry, "template": entry, "arguments": {
            "parameters": [{"name": k, "value": v} for k, v in self.params.items()
                           if k in {p["name"] for p in (tmpl.get("inputs") or {}).get("parameters") or []}]}}]}}
        return self._new_dag("", wrapper, "spec", {}, {}, None)

    def _check_stall(self) -> None:
        if self.changed or self.waiting or any(n.retry_at is not None for n in self.queue):
            return
        # a ready daemon only serves: if nothing else runs and the queue cannot move (a DAG's parallelism
        # slot or a semaphore held by the daemon), nothing ever will
        running = self.procs.running
        serving = all(n.daemon and n.ready and not n.stopping and n.deadline is None for n in running)
        if running and not (serving and self.queue):
            return
        if self.queue:
            raise WorkflowError(f"nodes {', '.join(n.id for n in self.queue)} can never start: check the semaphore "
                                f"limits ({self.sem_limits or 'all 1'}), parallelism ({self.parallelism}) and the "
                                "parallelism of DAG templates (running daemons hold their DAG's slots)")
        raise RuntimeError(f"local runner stalled with the entrypoint still running (internal error); see {self.out}")

    # -- deciding tasks --------------------------------------------------------------------------

    def _new_dag(self, did: str, tmpl: dict, tpath: str, inputs: dict, in_arts: dict, parent: Task | None) -> Dag:
        dag = Dag(did, tmpl, tpath, inputs, in_arts, parent)
        dag.deps, dag.logic, _ = dag_dependencies(tmpl, tpath)
        for j, spec in enumerate(tmpl["dag"]["tasks"]):
            tid = f"{did}.{spec['name']}" if did else spec["name"]
            child_tmpl = self.templates[spec["template"]][0]
            dag.tasks[spec["name"]] = Task(spec["name"], tid, spec, f"{tpath}.dag.tasks[{j}]", dag,
                                           daemon=bool(child_tmpl.get("daemon")))
        for task in dag.tasks.values():
            if task.daemon:
                # resume: a daemon stays down when it and everything after it already succeeded
                after = [t for t in dag.tasks.values() if task.name in ancestors(dag.deps, t.name)]
                done = [t for t in [task, *after] if (read_json(self.out / "nodes" / t.id / "status.json") or {}).get("phase") == "Succeeded"]
                task.keep_daemon_down = len(done) == len(after) + 1
        self.changed = True
        return dag

    def _advance_all(self) -> None:
        for _ in range(100):  # settle chains of reused nodes in one tick
            self.changed = False
            self._advance(self.root)
            if not self.changed:
                break

    def _advance(self, dag: Dag) -> None:
        if dag.phase != "Running":
            return
        for task in dag.tasks.values():
            if task.phase is not None:
                continue
            if task.children:
                for c in task.children:
                    if isinstance(c, Dag):
                        self._advance(c)
                self._settle(task)
                continue
            if not all(fulfilled(dag.tasks[d]) for d in dag.deps[task.name]):
                continue
            self.changed = True
            logic = dag.logic[task.name]
            if logic is not None and not evaluate(logic, results_of(dag)):
                self._decide(task, "Omitted", "depends condition not met")
                continue
            try:
                self._expand(task)
            except TaskError as e:
                for c in task.children:  # items expanded before the error do not run
                    if c in self.queue:
                        self.queue.remove(c)
                        c.phase = "Omitted"
                self._decide(task, "Error", str(e))
                continue
            self._settle(task)
        if all(fulfilled(t) for t in dag.tasks.values()):
            self._finish_dag(dag)

    def _decide(self, task: Task, phase: str, message: str) -> None:
        task.phase, task.message = phase, message
        self.changed = True
        self.rows.append(task)
        self.display.event(task.id, phase, message)
        if phase in FAILED:
            self.failures.append(task)

    def _settle(self, task: Task) -> None:
        """Derive a started task's phase from its children once they are all done."""
        if task.phase is not None or not task.children:
            return
        phase = task_phase(task)
        if phase is None:
            return
        task.phase = phase
        if not task.fanout:
            task.message = task.children[0].message
        self.changed = True
        if task.fanout or isinstance(task.children[0], Dag):
            atomic_json(self.out / "nodes" / task.id / "status.json",
                        {"id": task.id, "kind": "TaskGroup" if task.fanout else "DAG", "phase": task.phase,
                         "children": [c.id for c in task.children]})

    def _finish_dag(self, dag: Dag) -> None:
        for task in dag.tasks.values():
            for c in task.children:
                if isinstance(c, Node) and c.daemon and c.proc is not None:
                    self.procs.stop(c, DAEMON_STOP_GRACE_S)
        dag.phase, message = dag_phase(dag)
        if message:
            dag.message = message
        if dag.phase == "Succeeded" and dag.tmpl.get("outputs"):
            try:
                lookup = self.binder.dag_lookup(dag, None, NO_ITEM)
                outs = dag.tmpl["outputs"]
                for j, p in enumerate(outs.get("parameters") or []):
                    dag.outputs["parameters"][p["name"]] = subst(
                        str(p["valueFrom"]["parameter"]), lookup, f"{dag.tpath}.outputs.parameters[{j}].valueFrom.parameter")
                for j, a in enumerate(outs.get("artifacts") or []):
                    dag.outputs["artifacts"][a["name"]] = subst(a["from"], lookup, f"{dag.tpath}.outputs.artifacts[{j}].from")
            except TaskError as e:
                dag.phase, dag.message = "Error", str(e)
                self.failures.append(dag)
        self.changed = True

    def _expand(self, task: Task) -> None:
        """Turn a task whose dependencies are met into its nodes: one, one per item, or none (when: false)."""
        dag, spec = task.dag, task.spec
        tmpl, tpath = self.templates[spec["template"]]
        allowed = ancestors(dag.deps, task.name)
        lookup = self.binder.dag_lookup(dag, allowed, NO_ITEM)
        items: list[Any] = [NO_ITEM]
        if "withItems" in spec:
            items, task.fanout = subst(spec["withItems"], lookup, f"{task.path}.withItems"), True
        elif "withParam" in spec:
            text = subst(str(spec["withParam"]), lookup, f"{task.path}.withParam")
            try:
                items = json.loads(text)
            except ValueError:
                items = None
            if not isinstance(items, list):
                raise TaskError(f"{task.path}.withParam: not a JSON list: {text[:200]!r}")
            task.fanout = True
        if task.fanout and not items:
            self._decide(task, "Skipped", "Skipped, empty params")
            return
        for i, item in enumerate(items):
            cid = f"{task.id}.{i}" if task.fanout else task.id
            ilookup = self.binder.dag_lookup(dag, allowed, item)
            if spec.get("when"):
                text = subst(str(spec["when"]), ilookup, f"{task.path}.when")
                try:
                    run = eval_when(text)
                except ValueError as e:
                    raise TaskError(f"{task.path}.when: {e} (after substitution: {text!r})") from None
                if not run:
                    skipped = Node(cid, task, tmpl, tpath, {}, {}, self.out / "nodes" / cid,
                                   item=None if item is NO_ITEM else item, phase="Skipped",
                                   message=f"when \"{text}\" evaluated false")
                    task.children.append(skipped)
                    self.rows.append(skipped)
                    self.display.event(cid, "Skipped", skipped.message)
                    continue
            params, arts = self.binder.task_arguments(task, cid, ilookup)
            inputs, in_arts = self.binder.bind_inputs(tmpl, tpath, params, arts, task.path, cid)
            if "dag" in tmpl:
                child = self._new_dag(cid, tmpl, tpath, inputs, in_arts, task)
            else:
                child = self._new_node(cid, task, tmpl, tpath, inputs, in_arts, None if item is NO_ITEM else item)
            task.children.append(child)

    def _new_node(self, cid: str, task: Task, tmpl: dict, tpath: str, inputs: dict, in_arts: dict, item: Any) -> Node:
        """A node, reused from an earlier run when that run's status.json still holds (resume), else queued."""
        node = Node(cid, task, tmpl, tpath, inputs, in_arts, self.out / "nodes" / cid, item=item,
                    daemon=bool(tmpl.get("daemon")))
        self.rows.append(node)
        status = read_json(node.dir / "status.json") or {}
        arts_key = {k: str(v) if v else None for k, v in in_arts.items()}
        if node.daemon and task.keep_daemon_down:
            node.phase, node.reused = "Succeeded", True
            node.message = "not restarted: it and every task after it already succeeded"
        elif (not node.daemon and "resource" not in tmpl and status.get("phase") == "Succeeded" and status.get("inputs") == inputs
              and status.get("in_artifacts") == arts_key
              and not any(p is not None and self.binder.stale(p) for p in in_arts.values())
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

    # -- scheduling and running nodes --------------------------------------------------------------

    def _dag_chain(self, node: Node):
        """(DAG, its child that holds `node`) from the node's own DAG up to the entrypoint."""
        child, dag = node, node.task.dag
        while dag is not None:
            yield dag, child
            child, dag = dag, dag.parent.dag if dag.parent is not None else None

    def _active(self, child: Node | Dag) -> bool:
        """Whether a DAG's child holds one of the DAG's parallelism slots."""
        if isinstance(child, Node):
            return child.proc is not None
        # a nested DAG keeps its slot between its nodes, and until its stopped daemons have exited
        return (child.started and child.phase == "Running") or any(
            self._active(c) for t in child.tasks.values() for c in t.children)

    def _locks(self, node: Node) -> list[tuple[str, int]]:
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
        active: dict[Dag, set] = {}  # DAG with parallelism -> its children that hold a slot, this tick
        for node in list(self.queue):
            if node.retry_at is not None and now < node.retry_at:
                continue
            if not node.daemon and sum(1 for n in self.procs.running if not n.daemon and not n.stopping) >= self.parallelism:
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

    def _release(self, node: Node) -> None:
        for k in node.locks:
            self.held[k] -= 1
        node.locks = []

    def _launch(self, node: Node) -> None:
        node.attempts += 1
        now = time.monotonic()
        if node.attempts == 1:
            node.started, node.t_first = time.time(), now
        node.t_attempt, node.retry_at, node.kill_reason, node.kill_at = now, None, None, None
        node.dir.mkdir(parents=True, exist_ok=True)
        self.binder.fresh.add(node.dir)
        shutil.rmtree(node.dir / "params", ignore_errors=True)
        (node.dir / "params").mkdir()
        (node.dir / "artifacts").mkdir(exist_ok=True)
        if "resource" in node.tmpl:
            self._apply(node)
            return
        try:
            argv, shown, env, cwd = self.containers.prepare(node)
        except (TaskError, WorkflowError) as e:
            self._attempt_done(node, "Error", str(e))
            return
        error = self.procs.start(node, argv, shown, env, cwd)
        if error is not None:
            self._attempt_done(node, "Error", error)
            return
        node.phase, node.message = "Running", ""
        self.display.event(node.id, "Running", f"attempt {node.attempts}" if node.attempts > 1 else "")

    def _apply(self, node: Node) -> None:
        """A resource template: act on the local cluster now, then wait for the conditions in _poll."""
        tp = node.tpath
        try:
            lookup = self.binder.container_lookup(node, {})
            r = subst(node.tmpl["resource"], lookup, f"{tp}.resource")
            success = conditions.parse(r.get("successCondition") or "")
            failure = conditions.parse(r.get("failureCondition") or "")
            manifest = read_manifest(r["manifest"], f"{tp}.resource.manifest")
            obj = self.cluster.act(r["action"], manifest, r.get("mergeStrategy") or "strategic", f"{tp}.resource")
            self.containers.schedule(node, {}, lookup)
        except ValueError as e:  # a condition that does not parse after substitution
            self._attempt_done(node, "Error", f"{tp}.resource: {e}")
            return
        except TaskError as e:
            self._attempt_done(node, "Error", str(e))
            return
        with open(node.dir / "log.txt", "a") as log:
            log.write(f"=== attempt {node.attempts}: kubectl {r['action']} {obj['kind'].lower()}/"
                      f"{obj['metadata']['name']} (local cluster {self.cluster.root}, generation "
                      f"{obj['metadata']['generation']}); waiting for: {r.get('successCondition') or 'nothing'}\n")
        node.resource, node.probe_next = (obj, success, failure), 0.0
        node.phase, node.message = "Running", ""
        self.waiting.append(node)
        self.display.event(node.id, "Running", f"{r['action']} {obj['kind']}/{obj['metadata']['name']}")

    def _poll_resources(self) -> None:
        now = time.monotonic()
        for node in list(self.waiting):
            if now < node.probe_next:
                continue
            node.probe_next = now + 1.0  # Argo polls every 5 s (RESOURCE_STATE_CHECK_INTERVAL)
            obj, success, failure = node.resource
            outcome, status = self.cluster.wait_state(obj, success, failure)
            if outcome is None and node.deadline is not None and now >= node.deadline:
                outcome = f"failed: activeDeadlineSeconds exceeded after {now - node.t_attempt:.1f}s; status {status}"
            if outcome is None:
                continue
            self.waiting.remove(node)
            node.intervals.append((node.t_attempt, now))
            with open(node.dir / "log.txt", "a") as log:
                log.write(f"{outcome}; status {status}\n")
            if outcome == "succeeded":
                self._attempt_done(node, "Succeeded", "")
            else:
                self._attempt_done(node, "Failed", outcome.removeprefix("failed: "))

    def _poll(self) -> None:
        self._poll_resources()
        for node, outcome in self.procs.poll():
            if outcome is None:
                problems = self.binder.collect_outputs(node)
                outcome = ("Error" if problems else "Succeeded", "; ".join(problems))
            self._attempt_done(node, *outcome)

    def _attempt_done(self, node: Node, phase: str, message: str) -> None:
        self._release(node)
        node.stopping = False
        if phase in FAILED:
            wait = retry_wait(node, phase, self.binder.container_lookup(node, {}))
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
            atomic_json(node.dir / "status.json", node_status(node))
        if phase in FAILED:
            self.failures.append(node)
        self.display.event(node.id, phase, message if phase != "Succeeded" else f"{node.finished - node.started:.1f}s")
        self._settle(node.task)

    # -- reporting -------------------------------------------------------------------------------

    def _summarize(self, interrupted: bool = False) -> RunResult:
        wall = time.monotonic() - self.t0
        spans = sorted(s for r in self.rows if isinstance(r, Node) for s in r.intervals)
        covered, end = 0.0, -math.inf
        for a, b in spans:  # union of the spans in which some node process did useful work
            if b > end:
                covered += b - max(a, end)
                end = b
        nodes: dict[str, dict] = {}
        for r in self.rows:
            if isinstance(r, Task):
                nodes[r.id] = {"id": r.id, "task": r.name, "phase": r.phase, "message": r.message, "attempts": 0,
                               "duration_s": 0.0, "outputs": {"parameters": {}, "artifacts": {}}}
            else:
                nodes[r.id] = (r.recorded or node_status(r)) | {"reused": r.reused}
        root = getattr(self, "root", None)
        ok = not interrupted and root is not None and root.phase == "Succeeded"
        failed = next((f for f in self.failures), None) if not ok else None
        failed_id = failed.id if failed is not None else None
        log_tail = tail(failed.dir / "log.txt", failed.log_start) if isinstance(failed, Node) else ""
        message = "interrupted" if interrupted else (root.message if root is not None else "")
        if failed is not None and not interrupted:
            message = f"{failed.id}: {failed.message}"
        result = RunResult("Succeeded" if ok else "Failed", nodes, round(wall, 3), round(max(wall - covered, 0.0), 3),
                           self.out, failed_id, log_tail, message)
        finished = iso(time.time())
        # every invocation of this run (a resume is one more), so that its whole time is known
        previous = read_json(self.out / "run.json") or {}
        history = []
        if previous.get("uid") == self.uid:  # a run.json from before invocations were kept is the first one
            history = previous.get("invocations") or [{k: previous.get(k) for k in INVOCATION_KEYS}]
        history = [*history, dict(zip(INVOCATION_KEYS, (iso(self.started), finished, result.wall_s, result.phase,
                                                        message)))][-MAX_INVOCATIONS:]
        atomic_json(self.out / "run.json", {
            "workflow": self.name, "uid": self.uid, "phase": result.phase, "message": message,
            "started": iso(self.started), "finished": finished, "wall_s": result.wall_s,
            "total_wall_s": round(sum(h.get("wall_s") or 0.0 for h in history), 3), "invocations": history,
            "node_s": round(covered, 3), "overhead_s": result.overhead_s, "parallelism": self.parallelism,
            "parameters": self.params, "failed_node": failed_id,
            "nodes": {k: {"phase": v["phase"], "attempts": v.get("attempts", 0), "duration_s": v.get("duration_s", 0.0),
                          "busy_s": v.get("busy_s", 0.0), "reused": v.get("reused", False),
                          "message": v.get("message") or ""} for k, v in nodes.items()},
        })
        self.display.summary(self.name, result)
        return result


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
                 stream_logs: bool = False, cluster: Path | None = None) -> RunResult:
    """Execute a rendered Workflow with local processes; `out` is the run folder (docs/runner.md).

    parameters: overrides of spec.arguments.parameters. volumes: volume name -> local folder.
    jobs: max concurrent non-daemon nodes (default spec.parallelism, else 1).
    semaphore_limits: "configmap/key" (or "key") -> limit (default 1).
    cluster: the local cluster's folder, where resource templates put their objects (default <out>/cluster).
    Raises WorkflowError before anything runs when the workflow cannot run locally, or when another
    runner holds `out` (workflows.runner.folderlock).
    """
    with folder_lock(Path(out)):  # FolderBusy (a WorkflowError) when another runner works on `out`
        run = Run(doc, Path(out), {k: as_str(v) for k, v in (parameters or {}).items()}, volumes or {}, jobs,
                  semaphore_limits or {}, console, stream_logs, cluster)
        return run.execute()


def run_file(path: str | Path, out: Path, **kwargs: Any) -> RunResult:
    """load_workflow + run_workflow."""
    return run_workflow(load_workflow(path), out, **kwargs)
