"""Inputs and outputs of tasks and nodes: what each {{variable}} means where it is used, which local path
an artifact has, and what a finished node produced (the path rule of docs/runner.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from workflows.runner.errors import TaskError, Unresolved
from workflows.runner.expressions import as_str, subst
from workflows.runner.graph import aggregate, fulfilled
from workflows.runner.state import NO_ITEM, Dag, Node, Task


class Binder:
    """The values a run gives names to: workflow variables, task outputs, artifact places."""

    def __init__(self, out: Path, name: str, uid: str, params: dict[str, str],
                 templates: dict[str, tuple[dict, str]]) -> None:
        self.out, self.name, self.uid, self.params, self.templates = out, name, uid, params, templates
        # node folders and keyed outputs of nodes that ran in this run: their consumers re-run too
        self.fresh: set[Path] = set()

    # -- variables -----------------------------------------------------------------------------

    def workflow_var(self, name: str) -> str:
        if name == "workflow.name":
            return self.name
        if name == "workflow.uid":
            return self.uid
        if name.startswith("workflow.parameters.") and name[20:] in self.params:
            return self.params[name[20:]]
        raise Unresolved("unknown variable")

    def dag_lookup(self, dag: Dag, allowed: set[str] | None, item: Any) -> Callable[[str], str]:
        """Variables in a DAG's scope: its inputs, the outputs of `allowed` tasks, the item of a fan-out."""

        def lookup(name: str) -> str:
            if item is not NO_ITEM and (name == "item" or name.startswith("item.")):
                if name == "item":
                    return as_str(item)
                if not isinstance(item, dict) or name[5:] not in item:
                    raise Unresolved(f"the item {as_str(item)} has no key '{name[5:]}'")
                return as_str(item[name[5:]])
            parts = name.split(".")
            if parts[0] == "tasks" and len(parts) in (3, 5):
                task = dag.tasks.get(parts[1])
                if task is None:
                    raise Unresolved(f"no task '{parts[1]}' in this DAG")
                if allowed is not None and task.name not in allowed:
                    raise Unresolved(f"task '{task.name}' is not among this task's dependencies")
                if len(parts) == 3 and parts[2] == "ip":
                    return "127.0.0.1"
                if len(parts) == 5 and parts[2] == "outputs" and parts[3] in ("parameters", "artifacts"):
                    return self.task_output(task, parts[3], parts[4])
            if parts[:2] == ["inputs", "parameters"] and len(parts) == 3 and parts[2] in dag.inputs:
                return dag.inputs[parts[2]]
            if parts[:2] == ["inputs", "artifacts"] and len(parts) == 3 and parts[2] in dag.in_arts:
                if dag.in_arts[parts[2]] is None:
                    raise Unresolved(f"optional input artifact '{parts[2]}' was not supplied")
                return str(dag.in_arts[parts[2]])
            return self.workflow_var(name)

        return lookup

    def container_lookup(self, node: Node, paths: dict[str, str]) -> Callable[[str], str]:
        """Variables in a container template's scope; `paths` are its resolved {{...path}} variables."""

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
                raise Unresolved("a path variable cannot be used inside another path")
            return self.workflow_var(name)

        return lookup

    def task_output(self, task: Task, kind: str, key: str) -> str:
        if not fulfilled(task):
            raise Unresolved(f"task '{task.name}' has not finished")
        if task.fanout:
            if kind == "artifacts":
                raise Unresolved(f"task '{task.name}' is fanned out; Argo does not aggregate artifacts")
            return aggregate([c.outputs["parameters"][key] for c in task.children if key in c.outputs["parameters"]])
        child = task.children[0] if task.children else None
        if child is not None and key in child.outputs[kind]:
            return child.outputs[kind][key]
        if kind == "parameters" and (child is None or child.phase == "Skipped"):
            # Argo fills a skipped task's outputs with their valueFrom.default
            tmpl = self.templates[task.spec["template"]][0]
            for p in (tmpl.get("outputs") or {}).get("parameters") or []:
                if p["name"] == key and "default" in (p.get("valueFrom") or {}):
                    return as_str(p["valueFrom"]["default"])
        phase = child.phase if child is not None else task.phase
        raise Unresolved(f"task '{task.name}' ({phase}) has no output {kind[:-1]} '{key}'")

    # -- inputs --------------------------------------------------------------------------------

    def task_arguments(self, task: Task, cid: str, lookup: Callable[[str], str]) -> tuple[dict, dict]:
        """The parameters and artifacts a task passes to its template, for one of its nodes."""
        args = task.spec.get("arguments") or {}
        params = {p["name"]: as_str(subst(p.get("value", ""), lookup, f"{task.path}.arguments.parameters[{j}].value"))
                  for j, p in enumerate(args.get("parameters") or [])}
        arts: dict[str, Path | None] = {}
        for j, a in enumerate(args.get("artifacts") or []):
            where = f"{task.path}.arguments.artifacts[{j}]"
            if "from" in a:
                try:
                    arts[a["name"]] = Path(subst(str(a["from"]), lookup, f"{where}.from"))
                except TaskError:
                    if not a.get("optional"):
                        raise
                    arts[a["name"]] = None
            elif "raw" in a:
                arts[a["name"]] = self.write_raw(cid, a["name"], subst(str(a["raw"].get("data", "")), lookup, f"{where}.raw.data"))
        return params, arts

    def bind_inputs(self, tmpl: dict, tpath: str, params: dict, arts: dict, where: str,
                    cid: str) -> tuple[dict[str, str], dict[str, Path | None]]:
        """A template's declared inputs from what was passed, defaults, raw data and keyed artifacts."""
        inputs: dict[str, str] = {}
        declared = (tmpl.get("inputs") or {})
        for p in declared.get("parameters") or []:
            name = p["name"]
            if name in params:
                value = params[name]
            elif "value" in p:
                value = as_str(p["value"])
            elif "default" in p:
                value = as_str(p["default"])
            else:
                raise TaskError(f"{where}: template '{tmpl['name']}' needs input parameter '{name}', which is not passed")
            enum = [as_str(e) for e in p.get("enum") or []]
            if enum and value not in enum:
                raise TaskError(f"{where}: input parameter '{name}'={value!r} of template '{tmpl['name']}' is not one of {', '.join(enum)}")
            inputs[name] = value
        in_arts: dict[str, Path | None] = {}
        lookup = lambda n: inputs[n[18:]] if n.startswith("inputs.parameters.") and n[18:] in inputs else self.workflow_var(n)  # noqa: E731
        for j, a in enumerate(declared.get("artifacts") or []):
            name = a["name"]
            if arts.get(name) is not None:
                if not arts[name].exists() and not a.get("optional"):
                    raise TaskError(f"{where}: input artifact '{name}' of template '{tmpl['name']}' does not exist at {arts[name]}")
                in_arts[name] = arts[name]
            elif "raw" in a:
                in_arts[name] = self.write_raw(cid, name, subst(str(a["raw"].get("data", "")), lookup, f"{tpath}.inputs.artifacts"))
            elif (a.get("s3") or {}).get("key") not in (None, ""):
                kpath = f"{tpath}.inputs.artifacts[{j}].s3.key"
                key = subst(str(a["s3"]["key"]), lookup, kpath)
                local = self.s3_path(key, kpath)
                if local.exists():
                    in_arts[name] = local
                elif a.get("optional"):
                    in_arts[name] = None
                else:
                    raise TaskError(f"{where}: input artifact '{name}' of template '{tmpl['name']}' reads key {key!r}, "
                                    f"but nothing is at {local}: no node has written that key to this run folder "
                                    "(mark the input optional: true if it may be absent)")
            elif a.get("optional"):
                in_arts[name] = None
            else:
                raise TaskError(f"{where}: template '{tmpl['name']}' needs input artifact '{name}', which is not passed")
        return inputs, in_arts

    def write_raw(self, cid: str, name: str, data: str) -> Path:
        path = self.out / "nodes" / cid / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data)
        return path

    def s3_path(self, key: str, where: str) -> Path:
        """The local place of a key in the workflow's default artifact repository: <out>/s3/<key>."""
        parts = [p for p in key.split("/") if p not in ("", ".")]
        if key.startswith("/") or ".." in parts or not parts or not key.strip():
            raise TaskError(f"{where}: key {key!r} must be relative and must not contain '..': it names a place "
                            f"in the workflow's artifact repository (locally {self.out / 's3'}/<key>)")
        return self.out.joinpath("s3", *parts)

    def stale(self, path: Path) -> bool:
        """Whether an input artifact was (partly) produced anew in this run, so its consumer must re-run."""
        return any(path.is_relative_to(d) or d.is_relative_to(path) for d in self.fresh)

    # -- outputs -------------------------------------------------------------------------------

    def collect_outputs(self, node: Node) -> list[str]:
        """Read a finished node's output parameters and check its artifacts; problems make it Error."""
        problems = []
        params, arts = {}, {}
        for p in (node.tmpl.get("outputs") or {}).get("parameters") or []:
            cpath, local = node.param_paths[p["name"]]
            if local.is_file():
                text = local.read_text(errors="replace")
                params[p["name"]] = text[:-1] if text.endswith("\n") else text  # Argo trims one newline
            elif "default" in p["valueFrom"]:
                params[p["name"]] = as_str(p["valueFrom"]["default"])
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
