"""Strict checks of rendered Argo Workflows, before anything is submitted or run.

    kubellm lint distill.yaml            # these checks and the cluster checks; one problem per line

Four kinds of checks:
  - Argo's own validation rules (workflows/argo/rules.py): what `argo lint` or `argo submit` refuses;
  - schema: the document is validated with Hera's generated Argo models (`hera.workflows.models`)
    after every model is switched to `extra="forbid"`, so a misspelt key (`container.comand`) is an
    error instead of being silently dropped, as Argo's own decoder would do;
  - references that neither the models nor `argo lint` catch before run time: entrypoint and task
    templates, `depends`/`dependencies` and cycles, `{{tasks.X.outputs...}}` (X is an ancestor of the
    task and declares that output), `{{inputs...}}`, `{{outputs...}}`, `{{workflow.parameters.X}}`,
    arguments against the template's inputs, volume mounts, output parameters' `valueFrom`, enums
    (workflows.refs walks them, for the local runner too);
  - objects that resource templates create, where kubellm knows their schema: a Kubeflow Trainer
    TrainJob is validated with the kubeflow-trainer-api models (workflows/trainjob.py).

Every problem names the source and the field path:
    distill.yaml: spec.templates[2].dag.tasks[4].depends: unknown task 'finetun' (tasks are ...)

`kubellm lint` also runs the cluster checks (workflows/lint_cluster.py: names the workflow uses exist
in the k8s/ overlay, images pinned, non-root containers with requests and limits, retries on network
calls, progress of long steps); `lint_cluster_file` applies them to a file.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from workflows.argo import conditions
from workflows.argo.rules import argo_problems
from workflows.k8s_objects import kubectl_path, load_k8s_objects, load_required_secrets
from workflows.lint_cluster import CLUSTER_CHECKS, lint_cluster, network_reasons
from workflows.refs import Use, WorkflowRefs, spec_templates

# what `kubellm lint` uses; the cluster checks and their objects live in their own modules
__all__ = ["CLUSTER_CHECKS", "forbid_extra_fields", "kubectl_path", "lint_cluster", "lint_cluster_file", "lint_file",
           "lint_workflow", "load_k8s_objects", "load_required_secrets", "manifest_problems", "network_reasons",
           "reference_problems", "schema_problems"]

_PYDANTIC_ATTRS = ("__pydantic_core_schema__", "__pydantic_validator__", "__pydantic_serializer__",
                   "__pydantic_complete__")


@functools.lru_cache(maxsize=1)
def _model_classes() -> tuple[type, ...]:
    """Every pydantic model class defined in hera.workflows.models and its submodules."""
    from pydantic import BaseModel, RootModel

    import hera.workflows.models as root

    modules = [root] + [importlib.import_module(info.name)
                        for info in pkgutil.walk_packages(root.__path__, root.__name__ + ".")]
    found: dict[type, None] = {}
    for module in modules:
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, BaseModel) and not issubclass(obj, RootModel)
                    and obj.__module__.startswith(root.__name__)):
                found[obj] = None
    return tuple(found)


@contextlib.contextmanager
def forbid_extra_fields() -> Iterator[type]:
    """Within the block Hera's models reject unknown keys; yields the strict Workflow model.

    Each class's config and compiled schema are saved and put back afterwards, so the rest of
    the program (Hera's own serialisation, submit) keeps the lenient models.
    """
    import hera.workflows.models as models

    classes = _model_classes()
    saved = [(cls, dict(cls.model_config), {a: cls.__dict__[a] for a in _PYDANTIC_ATTRS if a in cls.__dict__})
             for cls in classes]
    try:
        for cls in classes:
            cls.model_config["extra"] = "forbid"
            if "__pydantic_core_schema__" in cls.__dict__:
                # without this the rebuild would reuse the nested models' lenient compiled schemas
                delattr(cls, "__pydantic_core_schema__")
        models.Workflow.model_rebuild(force=True)
        yield models.Workflow
    finally:
        for cls, config, attrs in saved:
            cls.model_config.clear()
            cls.model_config.update(config)
            for name in _PYDANTIC_ATTRS:
                if name in attrs:
                    setattr(cls, name, attrs[name])
                elif name in cls.__dict__:
                    delattr(cls, name)


def _loc(parts: tuple) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def schema_problems(doc: Any) -> list[str]:
    """Unknown fields and type errors against Argo's schema (as Hera's models encode it)."""
    from pydantic import ValidationError

    problems: list[str] = []
    with forbid_extra_fields() as workflow_model:
        try:
            workflow_model.model_validate(doc)
        except ValidationError as e:
            for err in e.errors():
                where = _loc(err["loc"])
                if err["type"] == "extra_forbidden":
                    problems.append(f"{where}: unknown field (not part of the Argo Workflow schema)")
                else:
                    problems.append(f"{where}: {err['msg']}")
    return list(dict.fromkeys(problems))


def reference_problems(doc: dict) -> list[str]:
    """Dangling names and references inside the workflow."""
    problems: list[str] = []
    spec = doc.get("spec") if isinstance(doc, dict) else None
    if not isinstance(spec, dict):
        return ["spec: missing"]
    wf = WorkflowRefs(spec)
    names = ", ".join(str(t.name) for t in wf.templates)
    wf_params = {p.get("name"): p for p in (spec.get("arguments") or {}).get("parameters") or []}
    volumes = {v.get("name") for v in spec.get("volumes") or []}
    volumes |= {(c.get("metadata") or {}).get("name") for c in spec.get("volumeClaimTemplates") or []}

    seen: set[str] = set()
    for t in wf.templates:
        if t.name in seen:
            problems.append(f"{t.path}.name: template '{t.name}' is defined twice")
        seen.add(t.name)
    entry = spec.get("entrypoint")
    if entry not in wf.by_name:
        problems.append(f"spec.entrypoint: unknown template '{entry}' (templates are {names})")
    else:
        problems += _argument_problems(wf.by_name[entry].body, "spec.arguments", {p: {} for p in wf_params}, {},
                                       "spec.entrypoint")

    for j, p in enumerate((spec.get("arguments") or {}).get("parameters") or []):
        problems += _enum_problem(p, f"spec.arguments.parameters[{j}]")
    for use in wf.argument_uses():
        if (p := _workflow_ref(use, wf_params)) is not None:
            problems.append(p)

    for t in wf.templates:
        tp, outputs = t.path, t.body.get("outputs") or {}
        for j, p in enumerate((t.body.get("inputs") or {}).get("parameters") or []):
            problems += _enum_problem(p, f"{tp}.inputs.parameters[{j}]")
        for j, p in enumerate(outputs.get("parameters") or []):
            vf = p.get("valueFrom")
            if not vf and "value" not in p:
                problems.append(f"{tp}.outputs.parameters[{j}]: output parameter '{p.get('name')}' has no valueFrom")
            elif vf and t.is_dag and "parameter" not in vf and "expression" not in vf:
                problems.append(f"{tp}.outputs.parameters[{j}].valueFrom: a DAG output needs valueFrom.parameter")
            elif vf and not t.is_dag and not any(k in vf for k in ("path", "jsonPath", "jqFilter", "event", "supplied", "configMapKeyRef", "expression", "parameter")):
                problems.append(f"{tp}.outputs.parameters[{j}].valueFrom: says nowhere to read '{p.get('name')}' from (set path)")
        for key in ("successCondition", "failureCondition"):
            # Argo parses these only when the node runs: a typo fails the node on the cluster
            text = str((t.body.get("resource") or {}).get(key) or "")
            if text and "{{" not in text:
                try:
                    conditions.parse(text)
                except ValueError as e:
                    problems.append(f"{tp}.resource.{key}: {e}")
        local_volumes = volumes | {v.get("name") for v in t.body.get("volumes") or []}
        for key in ("container", "script"):
            for j, m in enumerate((t.body.get(key) or {}).get("volumeMounts") or []):
                if m.get("name") not in local_volumes:
                    problems.append(f"{tp}.{key}.volumeMounts[{j}].name: no volume '{m.get('name')}' in spec.volumes, "
                                    f"spec.volumeClaimTemplates or the template's volumes (have {', '.join(sorted(map(str, local_volumes))) or 'none'})")
        if not t.is_dag:
            for use in wf.template_uses(t):
                if (p := _own_ref(use, wf_params, True)) is not None:
                    problems.append(p)
            continue

        problems += wf.graph(t)[2]
        for task in wf.tasks(t):
            target = wf.template_of(task)
            if "template" in task.body and target is None:
                problems.append(f"{task.path}.template: unknown template '{task.body.get('template')}' (templates are {names})")
            for use in wf.task_uses(task):
                if not use.is_expression and (p := _task_ref(wf, use, wf_params)) is not None:
                    problems.append(p)
            if target is not None:
                args = task.body.get("arguments") or {}
                problems += _argument_problems(target.body, f"{task.path}.arguments",
                                               {p.get("name"): p for p in args.get("parameters") or []},
                                               {a.get("name"): a for a in args.get("artifacts") or []}, task.path)
        for use in wf.output_uses(t):
            if (p := _task_ref(wf, use, wf_params)) is not None:
                problems.append(p)
    return problems


def _workflow_ref(use: Use, wf_params: Mapping) -> str | None:
    name = use.name
    if name.startswith("workflow.parameters.") and name[20:] not in wf_params:
        return f"{use.path}: '{{{{{name}}}}}': no workflow parameter '{name[20:]}' (spec.arguments has {', '.join(map(str, wf_params)) or 'none'})"
    return None


def _own_ref(use: Use, wf_params: Mapping, allow_path_vars: bool) -> str | None:
    """A reference to the template's own inputs or outputs (or to the workflow's parameters)."""
    t, name, path = use.template, use.name, use.path
    parts = name.split(".")
    if parts[:2] == ["inputs", "parameters"] and len(parts) == 3 and parts[2] not in t.inputs("parameters"):
        return f"{path}: '{{{{{name}}}}}': template '{t.name}' has no input parameter '{parts[2]}' (inputs: {', '.join(sorted(map(str, t.inputs('parameters')))) or 'none'})"
    if parts[:2] == ["inputs", "artifacts"] and len(parts) >= 3 and parts[2] not in t.inputs("artifacts"):
        return f"{path}: '{{{{{name}}}}}': template '{t.name}' has no input artifact '{parts[2]}' (inputs: {', '.join(sorted(map(str, t.inputs('artifacts')))) or 'none'})"
    if allow_path_vars and parts[0] == "outputs" and len(parts) == 4 and parts[1] in ("parameters", "artifacts"):
        if parts[2] not in t.outputs(parts[1]):
            return f"{path}: '{{{{{name}}}}}': template '{t.name}' declares no output {parts[1][:-1]} '{parts[2]}'"
    return _workflow_ref(use, wf_params)


def _task_ref(wf: WorkflowRefs, use: Use, wf_params: Mapping) -> str | None:
    """A reference in a DAG's scope: {{item}}, {{tasks.X...}}, or the DAG's own inputs."""
    name, path = use.name, use.path
    parts = name.split(".")
    if parts[0] == "item":
        return None if use.task is not None and use.task.has_item else f"{path}: '{{{{{name}}}}}' outside withItems/withParam"
    if parts[0] != "tasks" or len(parts) < 3:
        return _own_ref(use, wf_params, False)
    x = parts[1]
    tasks = {task.name: task for task in wf.tasks(use.template)}
    if x not in tasks:
        return f"{path}: '{{{{{name}}}}}': unknown task '{x}' (tasks are {', '.join(map(str, tasks))})"
    if use.task is not None and x not in use.task.ancestors:
        return f"{path}: '{{{{{name}}}}}': task '{x}' is not a dependency of this task; add it to depends"
    producer = wf.template_of(tasks[x])
    if producer is None:
        return None  # reported as a dangling template
    if parts[2] == "ip" and not producer.body.get("daemon"):
        return f"{path}: '{{{{{name}}}}}': template '{producer.name}' of task '{x}' is not a daemon, it has no ip"
    if parts[2] == "outputs" and len(parts) == 5 and parts[3] in ("parameters", "artifacts"):
        declared = producer.outputs(parts[3])
        if parts[4] not in declared:
            return (f"{path}: '{{{{{name}}}}}': template '{producer.name}' of task '{x}' declares no output "
                    f"{parts[3][:-1]} '{parts[4]}' (it has {', '.join(sorted(map(str, declared))) or 'none'})")
    return None


def _argument_problems(target: dict, where: str, params: dict, arts: dict, owner: str) -> list[str]:
    """The arguments a task (or the workflow, for the entrypoint) passes against the template's inputs."""
    problems = []
    inputs = target.get("inputs") or {}
    declared_params = {p.get("name"): p for p in inputs.get("parameters") or []}
    declared_arts = {a.get("name"): a for a in inputs.get("artifacts") or []}
    tname = target.get("name")
    for name, p in declared_params.items():
        if name not in params and "value" not in p and "default" not in p and "valueFrom" not in p:
            problems.append(f"{owner}: template '{tname}' needs input parameter '{name}', which is not passed"
                            + (" (add it to spec.arguments.parameters)" if where == "spec.arguments" else ""))
    for name, a in declared_arts.items():
        if name not in arts and not a.get("optional") and not _has_source(a):
            problems.append(f"{owner}: template '{tname}' needs input artifact '{name}', which is not passed")
    if where != "spec.arguments":
        for kind, given, declared in (("parameters", params, declared_params), ("artifacts", arts, declared_arts)):
            for j, name in enumerate(given):
                if name not in declared:
                    problems.append(f"{where}.{kind}[{j}]: template '{tname}' has no input {kind[:-1]} '{name}' "
                                    f"(inputs: {', '.join(sorted(map(str, declared))) or 'none'})")
    return problems


def _has_source(artifact: dict) -> bool:
    return any(k in artifact for k in ("from", "raw", "s3", "gcs", "http", "git", "hdfs", "oss", "azure", "artifactory", "hf"))


def _enum_problem(p: dict, where: str) -> list[str]:
    enum = p.get("enum")
    if not enum:
        return []
    value = p.get("value", p.get("default"))
    if value is None or "{{" in str(value):
        return []
    if str(value) not in [str(e) for e in enum]:
        return [f"{where}: value {value!r} of '{p.get('name')}' is not in its enum ({', '.join(map(str, enum))})"]
    return []


def manifest_problems(doc: dict) -> list[str]:
    """Objects that resource templates create, checked against their own schema where kubellm knows it:
    a Kubeflow Trainer TrainJob (workflows.trainjob.validate_trainjob). The manifest is read before Argo
    substitutes it, so `{{...}}` values are strings: fine in string fields, reported in integer ones."""
    from workflows.trainjob import GROUP, is_trainjob, validate_trainjob

    spec = doc.get("spec") if isinstance(doc, dict) else None
    if not isinstance(spec, dict):
        return []
    problems = []
    for t in spec_templates(spec):
        text = (t.body.get("resource") or {}).get("manifest")
        if not isinstance(text, str) or GROUP not in text:
            continue
        where = f"{t.path}.resource.manifest"
        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as e:
            problems.append(f"{where}: not YAML until Argo substitutes it, so it cannot be checked: write "
                            "integers at compile time and quote placeholders in strings "
                            f"({' '.join(str(e).split())})")
            continue
        if is_trainjob(obj):
            problems += [f"{where}: {p}" for p in validate_trainjob(obj)]
    return problems


def lint_workflow(doc: dict, source: str = "<workflow>") -> list[str]:
    """Problems of a rendered Workflow, each "<source>: <field path>: <what is wrong>"."""
    if not isinstance(doc, dict):
        return [f"{source}: not a mapping"]
    problems = []
    if doc.get("kind") == "CronWorkflow":
        # its own fields, then its workflowSpec exactly as a Workflow carrying it would be checked
        from workflows.argo.cron import cron_problems

        problems = cron_problems(doc)
        spec = (doc.get("spec") or {}).get("workflowSpec")
        if isinstance(spec, dict):
            inner = {"apiVersion": doc.get("apiVersion"), "kind": "Workflow",
                     "metadata": {"generateName": f"{(doc.get('metadata') or {}).get('name', 'cron')}-"}, "spec": spec}
            for p in lint_workflow(inner, ""):
                p = p.removeprefix(": ")
                problems.append(f"spec.workflowSpec.{p.removeprefix('spec.')}" if p.startswith("spec.") else p)
        return [f"{source}: {p}" for p in dict.fromkeys(problems)]
    if doc.get("kind") != "Workflow":
        problems.append(f"kind: expected Workflow or CronWorkflow, got {doc.get('kind')!r}")
    problems += schema_problems(doc)
    problems += reference_problems(doc)
    problems += argo_problems(doc)
    problems += manifest_problems(doc)
    return [f"{source}: {p}" for p in dict.fromkeys(problems)]


def _read_docs(path: Path) -> tuple[list, str | None, str]:
    """(documents, error, the file's text)."""
    try:
        text = path.read_text(encoding="utf-8")
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return [], f"{path.name}: cannot read: {e}", ""
    return docs, None if docs else f"{path.name}: no YAML document", text


def lint_file(path: str | Path) -> list[str]:
    """lint_workflow for every document of a YAML file."""
    path = Path(path)
    docs, error, text = _read_docs(path)
    if error:
        return [error]
    # PyYAML reads `2e-4` as text where Argo's YAML reader sees a number: check the text as Argo reads it
    from workflows.argo.decode import unquoted_scalars

    return [f"{path.name}: {p}" for p in unquoted_scalars(text)] + _each_doc(path, docs, lint_workflow)


def _each_doc(path: Path, docs: list[dict], check) -> list[str]:
    """Run `check(doc, name)` on every document, named `file` or `file#k` in a multi-document file."""
    problems = []
    for k, doc in enumerate(docs):
        problems += check(doc, path.name if len(docs) == 1 else f"{path.name}#{k}")
    return problems


def lint_cluster_file(path: str | Path, k8s_objects: list[dict], **kwargs) -> list[str]:
    """lint_cluster for every document of a YAML file, named as lint_file names them."""
    path = Path(path)
    docs, error, _ = _read_docs(path)
    if error:
        return [error]
    return _each_doc(path, docs, lambda doc, name: lint_cluster(doc, name, k8s_objects, **kwargs))
