"""Argo's check that every `{{variable}}` of a template can be resolved, ported for `kubellm lint`.

Argo v3.7 (workflow/validate/validate.go) builds a scope per template and rejects a tag it cannot
resolve: "failed to resolve {{...}}". The scope is built by validateInputs, validateTemplate,
validateSteps, validateDAG, addItemsToScope and addOutputsToScope; resolveAllVariables looks each
tag up. Only tags starting with item. steps. inputs. outputs. pod. workflow. tasks. are checked
(common.GlobalVarValidWorkflowVariablePrefix), `{{=expression}}` tags never are.

`workflows.lint.reference_problems` already reports undeclared `{{inputs.parameters.X}}`,
`{{inputs.artifacts.X}}`, `{{workflow.parameters.X}}`, `{{outputs...}}`, `{{item}}` outside a
loop and, in DAGs, `{{tasks.X...}}` naming an unknown or non-ancestor task, a daemon-less `.ip`
or an undeclared output; those tags are left to it so each mistake is reported once.

Two places are more lenient than Argo, which validates templates in call order: a global output
(`globalName`) and `{{workflow.failures}}` (with spec.onExit) count as defined everywhere.
"""

from __future__ import annotations

import re
from typing import Iterator

from workflows.refs import ancestors, dag_dependencies, iter_strings

TYPES = ("container", "containerSet", "steps", "dag", "script", "resource", "data", "suspend", "http", "plugin")
_PREFIXES = ("item.", "steps.", "inputs.", "outputs.", "pod.", "workflow.", "tasks.")
_TAG = re.compile(r"\{\{(.*?)\}\}", re.S)  # fasttemplate pairs each {{ with the next }}, newlines included
_ANY_ITEM, _ANY_WF_PARAM, _ANY_WF_ART = "item.*", "workflow.outputs.parameters.*", "workflow.outputs.artifacts.*"
UNRESOLVED = object()  # a templateRef: its template lives in the cluster


def template_type(t: dict) -> str | None:
    """The first template type set, in the order of Argo's Template.GetType."""
    return next((k for k in TYPES if t.get(k) is not None), None)


def is_leaf(t: dict) -> bool:
    """Template.IsLeaf: every type but steps, dag and suspend."""
    return template_type(t) not in ("steps", "dag", "suspend", None)


def is_pod_type(t: dict) -> bool:
    """Template.IsPodType: the types that run a pod."""
    return template_type(t) in ("container", "containerSet", "script", "resource", "data")


def has_output(t: dict) -> bool:
    """Template.HasOutput: the templates that have a result and an exit code."""
    main = any(isinstance(c, dict) and c.get("name") == "main"
               for c in (t.get("containerSet") or {}).get("containers") or [])
    return any(t.get(k) is not None for k in ("container", "script", "data", "http", "plugin")) or main


def tags(text: str) -> Iterator[str]:
    """The tags Argo's template.Validate hands to its validator: expression tags ({{=...}}) excluded."""
    for m in _TAG.finditer(text):
        if not m.group(1).startswith("="):
            yield m.group(1)


def global_scope(doc: dict, spec: dict) -> set[str]:
    """The global variables of ValidateWorkflow and newTemplateValidationCtx."""
    g = {f"workflow.{k}" for k in ("name", "namespace", "mainEntrypoint", "serviceAccountName", "uid", "status",
                                   "annotations", "annotations.json", "labels", "labels.json")}
    params = [p for p in (spec.get("arguments") or {}).get("parameters") or [] if isinstance(p, dict)]
    if params:
        g |= {"workflow.parameters", "workflow.parameters.json"}
        g |= {f"workflow.parameters.{p['name']}" for p in params if p.get("name")}
    meta, wfm = doc.get("metadata") or {}, spec.get("workflowMetadata") or {}
    g |= {f"workflow.annotations.{k}" for src in (meta.get("annotations"), wfm.get("annotations")) for k in src or {}}
    g |= {f"workflow.labels.{k}" for src in (meta.get("labels"), wfm.get("labels"), wfm.get("labelsFrom"))
          for k in src or {}}
    if spec.get("priority") is not None:
        g.add("workflow.priority")
    if spec.get("onExit"):
        g.add("workflow.failures")
    for t in _all_templates(spec):
        for kind in ("parameters", "artifacts"):
            for o in (t.get("outputs") or {}).get(kind) or []:
                name = o.get("globalName") if isinstance(o, dict) else None
                if name and "{{" in str(name):
                    g.add(_ANY_WF_PARAM if kind == "parameters" else _ANY_WF_ART)
                elif name:
                    g.add(f"workflow.outputs.{kind}.{name}")
    return g


def _all_templates(spec: dict) -> Iterator[dict]:
    for t in spec.get("templates") or []:
        if isinstance(t, dict):
            yield t
            for call in _calls(t):
                if isinstance(call.get("inline"), dict):
                    yield call["inline"]


def _calls(t: dict) -> list[dict]:
    calls = [x for x in (t.get("dag") or {}).get("tasks") or [] if isinstance(x, dict)]
    for group in t.get("steps") or []:
        calls += [x for x in group or [] if isinstance(x, dict)] if isinstance(group, list) else []
    return calls


def _unresolved(tag: str, scope: set[str], workflow_template: bool) -> bool:
    """resolveAllVariables' verdict on one tag: True when Argo fails to resolve it."""
    t = tag.strip()
    if not t.startswith(_PREFIXES) or t in scope:
        return False
    allowed_prefixes = ("outputs.", "workflow.creationTimestamp", "workflow.scheduledTime", "workflow.duration",
                        "tasks.name", "steps.name", "node.name")
    if t.startswith(allowed_prefixes):
        return False
    # withParam's item.*, a parameterised globalName's workflow.outputs.*.*, and a templateRef's
    # tasks.X.* (its outputs are only known in the cluster) accept any name below them
    if any(s.endswith(".*") and t.startswith(s[:-1]) for s in scope):
        return False
    return not (t.startswith("workflow.parameters") and workflow_template)


def _add_items(call: dict, scope: set[str]) -> None:
    """addItemsToScope: which `{{item...}}` a loop defines."""
    items = call.get("withItems")
    if items:
        for v in items if isinstance(items, list) else []:
            if isinstance(v, list):
                scope |= {f"item.[{i}]" for i in range(len(v))}
            elif isinstance(v, dict):
                scope |= {f"item.{k}" for k in v}
            else:
                scope.add("item")
    elif call.get("withParam"):
        scope |= {"item", _ANY_ITEM}
    elif call.get("withSequence") is not None:
        scope.add("item")


def _add_outputs(target, prefix: str, scope: set[str], aggregate: bool, ancestor: bool) -> None:
    """addOutputsToScope: what `{{tasks.X...}}` / `{{steps.X...}}` may name of a finished call."""
    scope |= {f"{prefix}.{k}" for k in ("id", "startedAt", "finishedAt", "hostNodeName")}
    if target is UNRESOLVED:
        scope.add(prefix + ".*")
        return
    if not isinstance(target, dict):
        return
    if target.get("daemon") is True:
        scope.add(f"{prefix}.ip")
    if has_output(target):
        scope |= {f"{prefix}.outputs.result", f"{prefix}.exitCode"}
    for kind in ("parameters", "artifacts"):
        for o in (target.get("outputs") or {}).get(kind) or []:
            if isinstance(o, dict):
                scope.add(f"{prefix}.outputs.{kind}.{o.get('name')}")
    if aggregate:
        if template_type(target) in ("script", "containerSet"):
            scope |= {f"{prefix}.outputs.result", f"{prefix}.exitCode"}
        scope.add(f"{prefix}.outputs.parameters")
    if ancestor:
        scope.add(f"{prefix}.status")


def variable_problems(doc: dict, spec: dict, sp: str) -> list[str]:
    """Every tag Argo's validator fails to resolve and lint's reference walker does not already report."""
    by_name = {t.get("name"): t for t in spec.get("templates") or [] if isinstance(t, dict)}
    workflow_template = doc.get("kind") in ("WorkflowTemplate", "ClusterWorkflowTemplate")
    globals_ = global_scope(doc, spec)
    problems: list[str] = []
    for i, t in enumerate(spec.get("templates") or []):
        if isinstance(t, dict):
            problems += _template_problems(t, f"{sp}.templates[{i}]", by_name, globals_, workflow_template)
    return list(dict.fromkeys(problems))


def _target(call: dict, by_name: dict):
    if isinstance(call.get("inline"), dict):
        return call["inline"]
    if call.get("templateRef"):
        return UNRESOLVED
    return by_name.get(call.get("template"))


def _base_scope(t: dict, globals_: set[str]) -> set[str]:
    """validateInputs, then the locals validateTemplate adds (pod.name)."""
    inputs = t.get("inputs") or {}
    params = [p for p in inputs.get("parameters") or [] if isinstance(p, dict)]
    scope = {f"inputs.parameters.{p.get('name')}" for p in params} | ({"inputs.parameters"} if params else set())
    for a in inputs.get("artifacts") or []:
        if isinstance(a, dict):
            scope.add(f"inputs.artifacts.{a.get('name')}")
            if is_leaf(t):
                scope.add(f"inputs.artifacts.{a.get('name')}.path")
    if is_pod_type(t):
        scope.add("pod.name")
    return scope | globals_


def _template_problems(t: dict, tp: str, by_name: dict, globals_: set[str], wft: bool) -> list[str]:
    scope = _base_scope(t, globals_)
    kind = template_type(t)
    problems: list[str] = []
    declared_in = {p.get("name") for p in (t.get("inputs") or {}).get("parameters") or [] if isinstance(p, dict)}
    declared_arts = {a.get("name") for a in (t.get("inputs") or {}).get("artifacts") or [] if isinstance(a, dict)}

    def check(value, path: str, sc: set[str], dag: dict | None = None, lint_sees: bool | tuple = True) -> None:
        for spath, text in iter_strings(value, path):
            # lint reads a DAG task's arguments, when, withParam and withItems, not its other fields
            # nor dag.target
            field = re.match(r"[.]?([A-Za-z]+)", spath[len(path):])
            seen_by_lint = lint_sees is True or (isinstance(lint_sees, tuple) and field is not None
                                                 and field.group(1) in lint_sees)
            for tag in tags(text):
                if _unresolved(tag, sc, wft) and not (
                        seen_by_lint and _lint_reports(tag.strip(), declared_in, declared_arts, globals_, dag)):
                    problems.append(f"{spath}: '{{{{{tag}}}}}' cannot be resolved in template '{t.get('name')}' "
                                    f"(Argo: failed to resolve {{{{{tag}}}}}): {_hint(tag.strip(), sc, t)}")

    if kind == "steps":
        # validateSteps: one scope grows step by step, so a step sees the steps before it
        for gi, group in enumerate(t.get("steps") or []):
            for si, step in enumerate(group if isinstance(group, list) else []):
                if not isinstance(step, dict):
                    continue
                prefix, target = f"steps.{step.get('name')}", _target(step, by_name)
                scope.add(f"{prefix}.status")
                _add_items(step, scope)
                if (step.get("hooks") or {}).get("exit") or step.get("onExit"):
                    _add_outputs(target, prefix, scope, False, False)
                step_scope = set(scope) | _inline_inputs(step)
                check(step, f"{tp}.steps[{gi}][{si}]", step_scope)
                _add_outputs(target, prefix, scope, bool(step.get("withItems") or step.get("withParam")), False)
    elif kind == "dag":
        tasks = [x for x in (t.get("dag") or {}).get("tasks") or [] if isinstance(x, dict)]
        deps, _, _ = dag_dependencies(t, tp)
        by_task = {x.get("name"): x for x in tasks}
        for x in tasks:  # validateDAG's first pass: every task's outputs are in scope
            _add_outputs(_target(x, by_name), f"tasks.{x.get('name')}", scope,
                         bool(x.get("withItems") or x.get("withParam")), False)
        check((t.get("dag") or {}).get("target"), f"{tp}.dag.target", scope, lint_sees=False)
        for x in tasks:
            if x.get("hooks"):
                scope.add(f"tasks.{x.get('name')}.status")
        for j, x in enumerate(tasks):
            task_scope = set(scope) | _inline_inputs(x)
            for a in ancestors(deps, x.get("name")):
                anc = by_task.get(a) or {}
                _add_outputs(_target(anc, by_name), f"tasks.{a}", task_scope,
                             bool(anc.get("withItems") or anc.get("withParam")), True)
            _add_items(x, task_scope)
            check(x, f"{tp}.dag.tasks[{j}]", task_scope,
                  dag={"tasks": by_task, "deps": deps, "self": x, "by_name": by_name},
                  lint_sees=("arguments", "when", "withParam", "withItems"))
    else:
        check({k: v for k, v in t.items() if k not in ("name", "outputs")}, tp, scope)
    check(t.get("outputs"), f"{tp}.outputs", scope, dag={"tasks": {}, "deps": {}, "self": None, "by_name": by_name}
          if kind == "dag" else None)
    return problems


def _inline_inputs(call: dict) -> set[str]:
    inline = call.get("inline") if isinstance(call.get("inline"), dict) else {}
    return {f"inputs.parameters.{p.get('name')}" for p in (inline.get("inputs") or {}).get("parameters") or []
            if isinstance(p, dict)}


def _lint_reports(tag: str, in_params: set, in_arts: set, globals_: set[str], dag: dict | None) -> bool:
    """Whether workflows.lint.reference_problems already reports this unresolvable tag."""
    parts = tag.split(".")
    if tag.startswith("workflow.parameters.") and tag not in globals_:
        return True
    if parts[:2] == ["inputs", "parameters"] and len(parts) == 3 and parts[2] not in in_params:
        return True
    if parts[:2] == ["inputs", "artifacts"] and len(parts) >= 3 and parts[2] not in in_arts:
        return True
    if dag is None:
        return False
    if parts[0] == "item":
        return dag["self"] is not None and not any(k in dag["self"] for k in ("withItems", "withParam", "withSequence"))
    if parts[0] != "tasks" or len(parts) < 3:
        return False
    name = parts[1]
    if name not in dag["tasks"]:
        return True
    if dag["self"] is not None and name not in ancestors(dag["deps"], dag["self"].get("name")):
        return True
    producer = dag["by_name"].get(dag["tasks"][name].get("template"))
    if not isinstance(producer, dict):
        return False
    if parts[2] == "ip" and not producer.get("daemon"):
        return True
    if parts[2] == "outputs" and len(parts) == 5 and parts[3] in ("parameters", "artifacts"):
        return parts[4] not in {o.get("name") for o in (producer.get("outputs") or {}).get(parts[3]) or []
                                if isinstance(o, dict)}
    return False


def _hint(tag: str, scope: set[str], t: dict) -> str:
    """What is in scope near the tag, so the message says what to write instead."""
    head = ".".join(tag.split(".")[:2]) if tag.split(".")[0] in ("tasks", "steps") else tag.split(".")[0]
    near = sorted(s for s in scope if s.startswith(head + ".") and not s.endswith("*"))
    if tag.startswith("pod."):
        return (f"only container, containerSet, script, resource and data templates run a pod ('{t.get('name')}' "
                f"is a {template_type(t)} template)")
    if tag.startswith("inputs.artifacts.") and tag.endswith(".path") and not is_leaf(t):
        return (f"only leaf templates put input artifacts on a path ('{t.get('name')}' is a "
                f"{template_type(t)} template)")
    if tag.startswith(("tasks.", "steps.")) and not near:
        kind = tag.split(".")[0]
        return (f"no {kind[:-1]} '{tag.split('.')[1]}' before this point"
                if template_type(t) == ("steps" if kind == "steps" else "dag")
                else f"a {template_type(t)} template has no {kind}")
    if tag.endswith((".outputs.result", ".exitCode")) and tag.startswith(("tasks.", "steps.")):
        return ("only container, script, data, http, plugin templates and containerSets with a 'main' container "
                "have a result and an exit code")
    if tag.startswith(("workflow.labels.", "workflow.annotations.")):
        return (f"no such {tag.split('.')[1][:-1]} on the workflow (metadata or spec.workflowMetadata; a "
                "controller's workflowDefaults are not known here)")
    if tag.startswith("item."):
        return (f"the loop defines {', '.join(near)}" if near else "no withItems/withParam/withSequence defines it here")
    if near:
        shown = near[:12] + (["..."] if len(near) > 12 else [])
        return f"defined here: {', '.join(shown)}"
    return "nothing of that name is defined here"
