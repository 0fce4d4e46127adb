"""Argo's own rules for a Workflow, ported so `kubellm lint` says no where `argo lint`, `argo submit`
or the controller would (target: Argo v3.7; each rule names the Go function it comes from).

    from workflows.argo.rules import argo_problems, unquoted_scalars
    argo_problems(yaml.safe_load(open("distill.yaml")))   # ["spec.templates[3]...: ...", ...]

Where the rules live:
  - this module: workflow/validate/validate.go (ValidateWorkflow, validateTemplate and the
    functions it calls) for names, template types, inputs, outputs, arguments, leaf, steps and
    DAG templates, hooks, podGC, CronWorkflow fields;
  - workflows.argo.decode: what fails while Argo decodes the YAML (resource quantities,
    parameter values that are not strings, unquoted YAML scalars);
  - workflows.argo.controller: what the controller refuses at run time (custom metrics,
    synchronization, memoize, retry back-off, suspend, hook templates);
  - workflows.argo.variables: resolveAllVariables, every `{{...}}` a template cannot resolve.

Rules workflows.lint.reference_problems already checks are not repeated here: duplicate template
and task names, a missing or unknown entrypoint, unknown task templates, `depends` naming unknown
tasks or results, both `depends` and `dependencies` on one task, cycles, a parameter value
outside its enum in spec.arguments, output parameters without valueFrom (and a DAG's without
valueFrom.parameter), and the `{{...}}` references listed in workflows.argo.variables.

A comment or docstring naming a Go function without a file means workflow/validate/validate.go;
wfv1 is pkg/apis/workflow/v1alpha1.

Skipped, because they need the cluster or a running controller: templateRef and
workflowTemplateRef targets, ConfigMap-sourced parameter values, HDFS artifact fields, cron
schedule syntax, Kubernetes' own pod validation (requests <= limits, whole GPUs). Argo v3.7
checks nothing more about daemon templates than `{{tasks.X.ip}}`, which lint covers.
"""

from __future__ import annotations

import posixpath
import re
from typing import Iterator
from urllib.parse import urlparse

import yaml

from workflows.argo.controller import (hook_template_problems, memoize_problems, metric_problems, retry_problems,
                                       sync_problems)
from workflows.argo.decode import quantity_problems, string_value_problems, unquoted_scalars
from workflows.argo.variables import TYPES, is_leaf, tags, template_type, variable_problems

__all__ = ["argo_problems", "unquoted_scalars"]

_FIELD_NAME = re.compile(r"[a-zA-Z0-9][-a-zA-Z0-9]*")  # validate.go workflowFieldNameFmt
_PARAM_NAME = re.compile(r"[-a-zA-Z0-9_]+")  # validate.go paramOrArtifactNameRegex
_IS_PARAMETER = re.compile(r"\{\{[-a-zA-Z0-9]+(\.[-a-zA-Z0-9_]+)*\}\}")  # validate.go paramRegex
_QUALIFIED = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LOCATIONS = ("artifactory", "azure", "git", "gcs", "hdfs", "http", "oss", "raw", "s3")  # ArtifactLocation.Get order
_POD_GC = ("", "OnPodCompletion", "OnPodSuccess", "OnWorkflowCompletion", "OnWorkflowSuccess")


def argo_problems(doc: dict) -> list[str]:
    """What Argo v3.7 refuses in a Workflow (or WorkflowTemplate / CronWorkflow), "<field path>: <problem>"."""
    found = _workflow_spec(doc) if isinstance(doc, dict) else None
    if found is None:
        return []
    spec, sp = found
    templates = list(_templates(spec, sp))
    names = [t.get("name") for tp, t in templates if re.fullmatch(r".*\.templates\[\d+\]", tp)]
    wf_values = {str(p.get("name")): str(p["value"]) for p in (spec.get("arguments") or {}).get("parameters") or []
                 if isinstance(p, dict) and p.get("value") is not None}
    problems = _workflow_problems(doc, spec, sp, names)
    for tp, t in templates:
        problems += _template_problems(spec, t, tp, names, wf_values)
    problems += metric_problems(spec, sp, templates, wf_values)
    problems += quantity_problems(spec, sp)
    problems += string_value_problems(spec, sp)
    problems += variable_problems(doc, spec, sp)
    return list(dict.fromkeys(problems))


def _workflow_spec(doc: dict) -> tuple[dict, str] | None:
    kind = doc.get("kind")
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else None
    if kind == "CronWorkflow" and spec is not None:
        inner = spec.get("workflowSpec")
        return (inner, "spec.workflowSpec") if isinstance(inner, dict) else None
    if kind in ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", None) and spec is not None:
        return spec, "spec"
    return None


def _templates(spec: dict, sp: str) -> Iterator[tuple[str, dict]]:
    """spec.templates and the inline templates of their tasks and steps, with their paths."""
    for i, t in enumerate(spec.get("templates") or []):
        if not isinstance(t, dict):
            continue
        tp = f"{sp}.templates[{i}]"
        yield tp, t
        for path, call in _calls(t, tp):
            if isinstance(call.get("inline"), dict):
                yield f"{path}.inline", call["inline"]


def _calls(t: dict, tp: str) -> Iterator[tuple[str, dict]]:
    for j, task in enumerate((t.get("dag") or {}).get("tasks") or []):
        if isinstance(task, dict):
            yield f"{tp}.dag.tasks[{j}]", task
    for g, group in enumerate(t.get("steps") or []):
        for s, step in enumerate(group if isinstance(group, list) else []):
            if isinstance(step, dict):
                yield f"{tp}.steps[{g}][{s}]", step


def _name_problems(items, path: str, what: str, param_style: bool, skip_covered: bool = False) -> list[str]:
    """validateWorkflowFieldNames: every name set, valid, and unique within its list.

    param_style: parameters and artifacts (isValidParamOrArtifactName: alphanumerics, '-', '_');
    anything else isValidWorkflowFieldName (alphanumerics and '-', starting with an alphanumeric,
    at most 128 characters). skip_covered: lint already reports missing and duplicate names.
    """
    problems, seen = [], set()
    for i, item in enumerate(items or []):
        name = item.get("name") if isinstance(item, dict) else None
        if name in (None, "") and not skip_covered:
            problems.append(f"{path}[{i}].name: missing: every {what} needs a name")
        elif name not in (None, ""):
            name = str(name)
            if param_style and not _PARAM_NAME.fullmatch(name):
                problems.append(f"{path}[{i}].name: '{name}' is not a valid {what} name: use alphanumerics, '_' or '-' "
                                f"(e.g. '{re.sub(r'[^-a-zA-Z0-9_]', '_', name)}')")
            elif not param_style and (not _FIELD_NAME.fullmatch(name) or len(name) > 128):
                fixed = re.sub(r"[^-a-zA-Z0-9]", "-", name).lstrip("-")[:128] or "x"
                problems.append(f"{path}[{i}].name: '{name}' is not a valid {what} name: use alphanumerics and '-', "
                                f"starting with an alphanumeric, at most 128 characters (e.g. '{fixed}')")
            if name in seen and not skip_covered:
                problems.append(f"{path}[{i}].name: {what} '{name}' is defined twice in this list")
            seen.add(name)
    return problems


def _workflow_problems(doc: dict, spec: dict, sp: str, names: list) -> list[str]:
    problems = []
    name = str((doc.get("metadata") or {}).get("name") or "")
    limit = 52 if doc.get("kind") == "CronWorkflow" else 63
    if len(name) > limit:
        # ValidateWorkflow / ValidateWorkflowTemplate (63: a label value); ValidateCronWorkflow (52:
        # room for the '-<unix time>' suffix of each run)
        problems.append(f"metadata.name: '{name}' has {len(name)} characters, more than the {limit} Argo allows "
                        f"for a {doc.get('kind') or 'Workflow'}: shorten it")
    if doc.get("kind") == "CronWorkflow":
        problems += _cron_problems(doc.get("spec") or {})
    if spec.get("workflowTemplateRef") and spec.get("templates"):
        # ValidateWorkflowTemplateRefFields
        problems.append(f"{sp}.templates: a workflow that uses workflowTemplateRef takes its templates from the "
                        "WorkflowTemplate: remove templates")
    # ValidateWorkflow: validateWorkflowFieldNames(wf.Spec.Templates)
    problems += _name_problems(spec.get("templates"), f"{sp}.templates", "template", False, skip_covered=True)
    for i, t in enumerate(spec.get("templates") or []):
        if isinstance(t, dict) and not t.get("name"):
            problems.append(f"{sp}.templates[{i}].name: missing: every template needs a name")
    # ValidateWorkflow: validateArguments("spec.arguments.", ..., allowEmptyValues) as `argo lint` runs it
    problems += _argument_problems(spec.get("arguments"), f"{sp}.arguments", allow_empty=True, lint_enum=True)
    on_exit = spec.get("onExit")
    if on_exit and on_exit not in names:
        # ValidateWorkflow -> validateTemplateHolder: "template name '...' undefined"
        problems.append(f"{sp}.onExit: unknown template '{on_exit}' (templates are {', '.join(map(str, names))})")
    problems += _hook_problems(spec, sp)
    problems += hook_template_problems(spec, sp, names)
    problems += _pod_gc_problems(spec.get("podGC"), f"{sp}.podGC")
    problems += sync_problems(spec, sp)
    return problems


def _cron_problems(cron: dict) -> list[str]:
    """ValidateCronWorkflow: one of schedule/schedules, a known concurrencyPolicy, a deadline >= 0."""
    problems = []
    if cron.get("schedule") and cron.get("schedules"):
        problems.append("spec.schedules: set schedule or schedules, not both")
    policy = cron.get("concurrencyPolicy") or ""
    if policy not in ("Allow", "Forbid", "Replace", ""):
        problems.append(f"spec.concurrencyPolicy: '{policy}' is not a valid concurrencyPolicy (Allow, Forbid or Replace)")
    deadline = cron.get("startingDeadlineSeconds")
    if isinstance(deadline, int) and deadline < 0:
        problems.append("spec.startingDeadlineSeconds: must be positive")
    return problems


def _hook_problems(owner: dict, path: str) -> list[str]:
    # validateHooks: every hook but `exit` runs when its expression is true, so it needs one
    return [f"{path}.hooks.{name}.expression: missing: a hook other than 'exit' runs when its expression holds"
            for name, hook in (owner.get("hooks") or {}).items()
            if name != "exit" and not (hook or {}).get("expression")]


def _pod_gc_problems(gc, path: str) -> list[str]:
    """ValidateWorkflow: wfv1 PodGCStrategy.IsValid and PodGC.GetLabelSelector (metav1.LabelSelectorAsSelector)."""
    if not isinstance(gc, dict):
        return []
    problems = []
    if (gc.get("strategy") or "") not in _POD_GC:
        problems.append(f"{path}.strategy: unknown strategy '{gc.get('strategy')}' (use {', '.join(_POD_GC[1:])})")
    selector = gc.get("labelSelector") or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if _label_error(str(key), True) or _label_error(str(value), False):
            problems.append(f"{path}.labelSelector.matchLabels.{key}: '{key}: {value}' is not a valid label key and value")
    for k, req in enumerate(selector.get("matchExpressions") or []):
        p = f"{path}.labelSelector.matchExpressions[{k}]"
        op, values = (req or {}).get("operator"), (req or {}).get("values") or []
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            problems.append(f"{p}.operator: '{op}' is not a valid label selector operator "
                            "(In, NotIn, Exists, DoesNotExist)")
        elif op in ("In", "NotIn") and not values:
            problems.append(f"{p}.values: {op} needs at least one value")
        elif op in ("Exists", "DoesNotExist") and values:
            problems.append(f"{p}.values: {op} takes no values")
        if _label_error(str((req or {}).get("key") or ""), True):
            problems.append(f"{p}.key: '{(req or {}).get('key')}' is not a valid label key")
    return problems


def _label_error(text: str, key: bool) -> bool:
    """A Kubernetes label key (optional DNS prefix and '/') or value (may be empty) fails validation."""
    if key:
        prefix, _, name = text.rpartition("/")
        return bool(prefix and (len(prefix) > 253 or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", prefix))
                    or len(name) > 63 or not _QUALIFIED.fullmatch(name))
    return len(text) > 63 or bool(text and not _QUALIFIED.fullmatch(text))


def _has_location_or_key(a: dict) -> bool:
    """wfv1 workflow_types.go ArtifactLocation.HasLocationOrKey.

    The first location set (in ArtifactLocation.Get order) is complete, or has a key.
    """
    kind = next((k for k in _LOCATIONS if a.get(k) is not None), None)
    if kind is None:
        return False
    loc = a[kind] if isinstance(a[kind], dict) else {}
    complete = {"artifactory": ("url", "usernameSecret"), "azure": ("endpoint", "container", "blob"), "git": ("repo",),
                "gcs": ("bucket", "key"), "hdfs": ("addresses",), "http": ("url",), "oss": ("bucket", "endpoint", "key"),
                "raw": (), "s3": ("endpoint", "bucket", "key")}[kind]
    if all(loc.get(f) for f in complete):
        return True
    key = {"azure": "blob", "gcs": "key", "hdfs": "path", "oss": "key", "s3": "key"}.get(kind)
    if kind in ("http", "artifactory"):
        return bool(urlparse(str(loc.get("url") or "")).path)
    return bool(key and loc.get(key))


def _argument_problems(args, path: str, allow_empty: bool, lint_enum: bool = False) -> list[str]:
    """validateArguments: validateArgumentsFieldNames, then validateArgumentsValues."""
    if not isinstance(args, dict):
        return []
    problems = _name_problems(args.get("parameters"), f"{path}.parameters", "parameter", True)
    problems += _name_problems(args.get("artifacts"), f"{path}.artifacts", "artifact", True)
    for j, p in enumerate(args.get("parameters") or []):
        if not isinstance(p, dict):
            continue
        pp, vf = f"{path}.parameters[{j}]", p.get("valueFrom")
        if vf is None and p.get("value") is None and not allow_empty:
            problems.append(f"{pp}: argument '{p.get('name')}' has no value or valueFrom: give it one")
        if isinstance(vf, dict) and (not any(vf.get(k) is not None for k in ("configMapKeyRef", "event", "supplied"))
                                     or any(vf.get(k) for k in ("path", "jsonPath", "parameter", "expression"))):
            problems.append(f"{pp}.valueFrom: an argument's valueFrom only allows default, configMapKeyRef and "
                            "supplied (path, jsonPath, parameter and expression are for outputs)")
        enum = p.get("enum")
        if enum is not None and len(enum) == 0:
            problems.append(f"{pp}.enum: empty: list at least one value, or remove enum")
        elif enum and p.get("value") is not None and not lint_enum and str(p["value"]) not in [str(e) for e in enum]:
            problems.append(f"{pp}.value: '{p['value']}' is not in the enum ({', '.join(map(str, enum))})")
    for j, a in enumerate(args.get("artifacts") or []):
        if not isinstance(a, dict):
            continue
        if not a.get("from") and not _has_location_or_key(a):
            problems.append(f"{path}.artifacts[{j}]: argument artifact '{a.get('name')}' needs from, a complete "
                            "artifact location, or a key" + (" (Argo v3.7 does not accept fromExpression alone here)"
                                                              if a.get("fromExpression") else ""))
        if a.get("from") and a.get("fromExpression"):
            problems.append(f"{path}.artifacts[{j}]: set from or fromExpression, not both")
    return problems


def _artifact_problems(t: dict, tp: str, side: str) -> list[str]:
    """The artifact checks of validateInputs and validateOutputs."""
    problems = []
    leaf, kind = is_leaf(t), template_type(t)
    for j, a in enumerate((t.get(side) or {}).get("artifacts") or []):
        if not isinstance(a, dict):
            continue
        ap = f"{tp}.{side}.artifacts[{j}]"
        path = str(a.get("path") or "")
        if not leaf and path:
            problems.append(f"{ap}.path: only container/script templates can put an artifact on a path ('{t.get('name')}' "
                            f"is a {kind} template: Argo rejects it with \"path only valid in container/script "
                            "templates\"); remove path, and give it to the artifact of the template that uses the files")
        elif leaf and not path:
            # wfv1 workflow_types.go Artifact.CleanPath
            problems.append(f"{ap}.path: missing: artifact '{a.get('name')}' of a {kind} template needs the path "
                            "where its files are")
        elif leaf and _climbs_out(path):
            problems.append(f"{ap}.path: '{path}' fails Argo's directory-traversal check (\"Directory traversal is "
                            "not permitted\"): write the path without '..' segments or '//'")
        if side == "inputs" and a.get("from"):
            problems.append(f"{ap}.from: not valid in inputs: pass the artifact as an argument of the task or step")
        if a.get("git") is not None and not (a.get("git") or {}).get("repo"):
            # validateArtifactLocation
            problems.append(f"{ap}.git.repo: missing: a git artifact needs the repository URL")
        glob = a.get("globalName")
        if side == "outputs" and glob and not _IS_PARAMETER.search(str(glob)) and not _PARAM_NAME.fullmatch(str(glob)):
            problems.append(f"{ap}.globalName: '{glob}' is not a valid name: use alphanumerics, '_' or '-'")
    return problems


def _climbs_out(path: str) -> bool:
    """wfv1 workflow_types.go Artifact.CleanPath's traversal check.

    Ported as written: its `/..$` pattern is a regexp, where '.' is any character, so a path whose
    last part has two characters is checked against its parent folder too.
    """
    if "/../" in path:
        safe = path[:path.index("/../")]
    elif re.search(r"/..$", path):
        safe = path[:-3]
    else:
        return False
    cleaned = posixpath.normpath(path)
    cleaned = "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned  # Go's Clean keeps one '/'
    return bool(safe) and (not cleaned.startswith(safe + "/") or len(cleaned) <= len(safe) + 1)


def _output_parameter_problems(t: dict, tp: str) -> list[str]:
    """validateOutputs and validateOutputParameter, beyond lint's 'has no valueFrom' checks."""
    problems, kind = [], template_type(t)
    lint_seen = ("path", "jsonPath", "jqFilter", "event", "supplied", "configMapKeyRef", "expression", "parameter")
    for j, p in enumerate((t.get("outputs") or {}).get("parameters") or []):
        if not isinstance(p, dict):
            continue
        pp, vf = f"{tp}.outputs.parameters[{j}]", p.get("valueFrom")
        glob = p.get("globalName")
        if glob and not _IS_PARAMETER.search(str(glob)) and not _PARAM_NAME.fullmatch(str(glob)):
            problems.append(f"{pp}.globalName: '{glob}' is not a valid name: use alphanumerics, '_' or '-'")
        if not isinstance(vf, dict):
            continue
        if p.get("value") is not None:
            problems.append(f"{pp}: has both value and valueFrom: choose one")
            continue
        set_ = [k for k in ("path", "jqFilter", "jsonPath", "parameter", "expression") if vf.get(k)]
        set_ += ["supplied"] if vf.get("supplied") is not None else []
        lint_silent = kind != "dag" and any(vf.get(k) is not None for k in lint_seen)
        if not set_ and lint_silent:
            problems.append(f"{pp}.valueFrom: says nowhere to read the value (choose one of path, jqFilter, jsonPath, "
                            "parameter, expression, supplied)")
        elif len(set_) > 1:
            problems.append(f"{pp}.valueFrom: sets {', '.join(set_)}: choose one")
        elif kind in ("container", "containerSet", "script") and set_ and "path" not in set_:
            problems.append(f"{pp}.valueFrom.path: must be specified for {kind} templates (the file the value is read from)")
        elif kind == "resource" and set_ and not set(set_) & {"jqFilter", "jsonPath"}:
            problems.append(f"{pp}.valueFrom: jqFilter or jsonPath must be specified for resource templates")
        elif kind == "steps" and not set(set_) & {"parameter", "expression"} and lint_silent:
            problems.append(f"{pp}.valueFrom: parameter or expression must be specified for steps templates")
    return problems


def _template_problems(spec: dict, t: dict, tp: str, names: list, wf_values: dict[str, str]) -> list[str]:
    problems = []
    kinds = [k for k in TYPES if t.get(k) is not None]
    if len(kinds) != 1:
        # validateTemplateType
        problems.append(f"{tp}: template '{t.get('name')}' " + ("has no type: set one of " + ", ".join(TYPES)
                                                                if not kinds else f"sets {' and '.join(kinds)}: keep one"))
    kind = template_type(t)
    inputs, outputs = t.get("inputs") or {}, t.get("outputs") or {}
    # validateInputs and validateOutputs: validateWorkflowFieldNames on each list
    for side, io in (("inputs", inputs), ("outputs", outputs)):
        problems += _name_problems(io.get("parameters"), f"{tp}.{side}.parameters", "parameter", True)
        problems += _name_problems(io.get("artifacts"), f"{tp}.{side}.artifacts", "artifact", True)
        problems += _artifact_problems(t, tp, side)
    problems += _output_parameter_problems(t, tp)
    timeout = _resolved(t.get("timeout"), wf_values)
    if t.get("timeout") and not is_leaf(t):
        problems.append(f"{tp}.timeout: a {kind} template doesn't support timeout (use activeDeadlineSeconds on its "
                        "leaf templates)")
    elif timeout is not None and re.fullmatch(r"[+-]?[0-9]+", timeout):
        # validateTemplate: a whole number is not a duration here
        problems.append(f"{tp}.timeout: '{timeout}' has no unit: write a duration such as {timeout}s")
    if kind in ("steps", "dag") and t.get("activeDeadlineSeconds") is not None:
        # validateNonLeaf
        problems.append(f"{tp}.activeDeadlineSeconds: only valid for leaf templates: set it on the templates the "
                        f"{kind} calls (or spec.activeDeadlineSeconds for the whole workflow)")
    if kind not in ("steps", "dag", None):
        problems += _leaf_problems(spec, t, tp, wf_values)
    if kind == "steps":
        problems += _steps_problems(t, tp, names)
    if kind == "dag":
        problems += _dag_problems(t, tp)
    for path, call in _calls(t, tp):
        problems += _call_problems(call, path)
        problems += hook_template_problems(call, path, names, call=True)
    problems += retry_problems(t, tp)
    problems += memoize_problems(t, tp, wf_values)
    problems += sync_problems(t, tp)
    return problems


def _resolved(value, wf_values: dict[str, str]) -> str | None:
    """The text of value after the validator's substitution, or None when a variable stays unknown."""
    if value is None:
        return None
    text = str(value)
    for tag in set(tags(text)):
        name = tag.strip()
        if not name.startswith("workflow.parameters.") or name[20:] not in wf_values:
            return None
        text = text.replace("{{" + tag + "}}", wf_values[name[20:]])
    return text


def _leaf_problems(spec: dict, t: dict, tp: str, wf_values: dict[str, str]) -> list[str]:
    """validateLeaf."""
    problems = []
    defaults = spec.get("templateDefaults") or {}
    for key in ("container", "script"):
        if isinstance(t.get(key), dict) and not t[key].get("image") and not (defaults.get(key) or {}).get("image"):
            problems.append(f"{tp}.{key}.image: may not be empty (set it, or spec.templateDefaults.{key}.image)")
    if isinstance(t.get("container"), dict):
        # mountPaths: no two volume mounts, nor an input artifact, on one path
        mounted: dict[str, str] = {}
        for i, m in enumerate(t["container"].get("volumeMounts") or []):
            mp = (m or {}).get("mountPath")
            if mp in mounted:
                problems.append(f"{tp}.container.volumeMounts[{i}].mountPath: '{mp}' already mounted in {mounted[mp]}")
            mounted[mp] = f"container.volumeMounts.{(m or {}).get('name')}"
        for i, a in enumerate((t.get("inputs") or {}).get("artifacts") or []):
            ap = (a or {}).get("path")
            if not ap:
                continue
            if ap in mounted:
                problems.append(f"{tp}.inputs.artifacts[{i}].path: '{ap}' already mounted in {mounted[ap]}: "
                                "put the artifact on another path")
            mounted[ap] = f"inputs.artifacts.{(a or {}).get('name')}"
    if isinstance(t.get("containerSet"), dict):
        problems += _container_set_problems(t, f"{tp}.containerSet")
    if isinstance(t.get("resource"), dict):
        problems += _resource_problems(t, f"{tp}.resource")
    ads = t.get("activeDeadlineSeconds")
    if ads is not None:
        # intstr.IsValidIntOrArgoVariable and intstr.Int on the substituted template: a workflow
        # parameter becomes its value; any other variable a placeholder ('placeholder-N') or itself
        text = _resolved(ads, wf_values)
        if text is None:
            bad = not str(ads).startswith("{{")
        else:
            bad = not re.fullmatch(r"[+-]?[0-9]+", text) or int(text) < 0
        if bad:
            problems.append(f"{tp}.activeDeadlineSeconds: '{ads}' must be a positive integer > 0 or an argo variable "
                            "(seconds, e.g. 3600)")
    if t.get("parallelism") is not None:
        problems.append(f"{tp}.parallelism: only valid for steps and dag templates: set it on the template that "
                        "calls this one")
    return problems


def _container_set_problems(t: dict, path: str) -> list[str]:
    """wfv1 container_set_template_types.go ContainerSetTemplate.Validate, and validateLeaf's 'main' rule."""
    cs = t["containerSet"]
    containers = [c for c in cs.get("containers") or [] if isinstance(c, dict)]
    if not containers:
        return [f"{path}.containers: must have at least one container"]
    problems = _name_problems(containers, f"{path}.containers", "container", False)
    mounted: set = set()
    for i, m in enumerate(cs.get("volumeMounts") or []):
        mp = (m or {}).get("mountPath")
        if mp in mounted:
            problems.append(f"{path}.volumeMounts[{i}].mountPath: '{mp}' is mounted twice")
        mounted.add(mp)
    deps = {c.get("name"): [str(d) for d in c.get("dependencies") or []] for c in containers}
    for i, c in enumerate(containers):
        for d in deps[c.get("name")]:
            if d not in deps:
                problems.append(f"{path}.containers[{i}].dependencies: container '{d}' is not defined")
    state: dict = {}

    def cyclic(n) -> bool:
        state[n] = 1
        for d in deps.get(n, []):
            if d in deps and (state.get(d) == 1 or d not in state and cyclic(d)):
                return True
        state[n] = 2
        return False

    if any(n not in state and cyclic(n) for n in sorted(deps, key=str)):
        problems.append(f"{path}.containers: dependency cycle between containers: remove one dependency")
    io = (t.get("inputs") or {}).get("artifacts") or (t.get("outputs") or {}).get("parameters") \
        or (t.get("outputs") or {}).get("artifacts")
    if io and "main" not in deps:
        problems.append(f"{path}.containers: must have a container named \"main\" for input or output")
    return problems


def _resource_problems(t: dict, path: str) -> list[str]:
    """validateLeaf's resource template rules."""
    r, problems = t["resource"], []
    action = str(r.get("action") or "")
    if "{{" not in action and action not in ("get", "create", "apply", "delete", "replace", "patch"):
        problems.append(f"{path}.action: '{action}' must be one of: get, create, apply, delete, replace, patch")
    if action in ("delete", "get"):
        return problems
    manifest, source = r.get("manifest"), r.get("manifestFrom")
    if not manifest and source is None:
        problems.append(f"{path}: either manifest or manifestFrom must be specified")
    elif manifest and source is not None:
        problems.append(f"{path}: set manifest or manifestFrom, not both")
    art = ((source or {}).get("artifact") or {}).get("name") if isinstance(source, dict) else None
    if art is not None and art not in {(a or {}).get("name") for a in (t.get("inputs") or {}).get("artifacts") or []}:
        problems.append(f"{path}.manifestFrom.artifact.name: '{art}' is not an input artifact of this template")
    if isinstance(manifest, str) and manifest and not re.fullmatch(r"\s*\{\{[^{}]*\}\}\s*", manifest):
        # the validator has substituted variables with placeholders (and SubstituteResourceManifestExpressions
        # the {{=...}} ones) before it parses the manifest
        try:
            yaml.safe_load(re.sub(r"\{\{.*?\}\}", "placeholder", manifest, flags=re.S))
        except yaml.YAMLError as e:
            problems.append(f"{path}.manifest: must be a valid yaml ({str(e).splitlines()[0]})")
    return problems


def _call_problems(call: dict, path: str) -> list[str]:
    """Per task or step: validateTemplateHolder's reference rules, addItemsToScope's loop rules, validateHooks."""
    problems = []
    ref = call.get("templateRef")
    if ref is not None:
        if call.get("template"):
            problems.append(f"{path}.template: template name cannot be specified with templateRef: keep one")
        for field in ("name", "template"):
            if not (ref or {}).get(field):
                problems.append(f"{path}.templateRef.{field}: missing: name the WorkflowTemplate and its template")
    loops = [k for k in ("withItems", "withParam", "withSequence") if call.get(k) not in (None, "", [])]
    if len(loops) > 1:
        problems.append(f"{path}: only one of withItems, withParam, withSequence can be specified (has {', '.join(loops)})")
    seq = call.get("withSequence")
    if isinstance(seq, dict) and seq.get("count") is not None and seq.get("end") is not None:
        problems.append(f"{path}.withSequence: only one of count or end can be defined")
    problems += _hook_problems(call, path)
    return problems


def _steps_problems(t: dict, tp: str, names: list) -> list[str]:
    """validateSteps: step names set, valid and unique in the template; templates known; arguments."""
    problems, seen = [], set()
    for path, step in _calls(t, tp):
        name = step.get("name")
        if not name:
            problems.append(f"{path}.name: missing: every step needs a name")
        elif name in seen:
            problems.append(f"{path}.name: step '{name}' is not unique in template '{t.get('name')}'")
        elif not _FIELD_NAME.fullmatch(str(name)) or len(str(name)) > 128:
            problems.append(f"{path}.name: '{name}' is not a valid step name: use alphanumerics and '-', starting "
                            "with an alphanumeric, at most 128 characters")
        seen.add(name)
        target = step.get("template")
        if target and not step.get("templateRef") and target not in names:
            problems.append(f"{path}.template: unknown template '{target}' (templates are {', '.join(map(str, names))})")
        problems += _argument_problems(step.get("arguments"), f"{path}.arguments", allow_empty=False)
    return problems


def _dag_problems(t: dict, tp: str) -> list[str]:
    """validateDAG, beyond lint's task-name, depends and cycle checks."""
    problems = []
    tasks = [x for x in (t.get("dag") or {}).get("tasks") or [] if isinstance(x, dict)]
    if not tasks:
        return [f"{tp}.dag.tasks: template '{t.get('name')}' must have at least one task"]
    problems += _name_problems(tasks, f"{tp}.dag.tasks", "task", False, skip_covered=True)
    by_name = {x.get("name"): x for x in tasks}
    using_depends = any(x.get("depends") for x in tasks)
    for j, x in enumerate(tasks):
        path, name = f"{tp}.dag.tasks[{j}]", str(x.get("name") or "")
        if (using_depends or x.get("dependencies")) and name[:1].isdigit():
            problems.append(f"{path}.name: '{name}' cannot begin with a digit when using either 'depends' or "
                            "'dependencies'")
        if using_depends and x.get("dependencies") and not x.get("depends"):
            problems.append(f"{path}.dependencies: template '{t.get('name')}' cannot use both 'depends' and "
                            "'dependencies' in the same DAG: write this task's dependencies as depends")
        if using_depends and x.get("continueOn") is not None:
            problems.append(f"{path}.continueOn: cannot use 'continueOn' when using 'depends': depend on "
                            "'<task>.Failed' / '<task>.Errored' instead")
        # validateDAG with workflow/common/ancestry.go GetTaskDependencies: an items-based result
        # (.AnySucceeded, .AllFailed) needs a task that loops
        for dep, result in re.findall(r"([a-zA-Z0-9][-a-zA-Z0-9]*?)\.([A-Z][a-zA-Z]+)", str(x.get("depends") or "")):
            d = by_name.get(dep)
            if result in ("AnySucceeded", "AllFailed") and d is not None and not any(
                    d.get(k) for k in ("withItems", "withParam", "withSequence")):
                problems.append(f"{path}.depends: '{dep}.{result}' is an items-based condition, but task '{dep}' "
                                "has no withItems, withParam or withSequence")
        problems += _argument_problems(x.get("arguments"), f"{path}.arguments", allow_empty=False)
    target = str((t.get("dag") or {}).get("target") or "")
    for name in target.split(" ") if target else []:
        # validateDAGTargets
        if not _IS_PARAMETER.search(name) and name not in by_name:
            problems.append(f"{tp}.dag.target: target '{name}' is not defined (tasks are {', '.join(map(str, by_name))})")
    return problems
