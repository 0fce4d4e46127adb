"""Strict checks of rendered Argo Workflows, before anything is submitted or run.

    python -m workflows.lint distill.yaml            # prints one problem per line, exit 1 if any

Two kinds of checks:
  - schema: the document is validated with Hera's generated Argo models (`hera.workflows.models`)
    after every model is switched to `extra="forbid"`, so a misspelt key (`container.comand`) is an
    error instead of being silently dropped, as Argo's own decoder would do;
  - references that neither the models nor `argo lint` catch before run time: entrypoint and task
    templates, `depends`/`dependencies` and cycles, `{{tasks.X.outputs...}}` (X is an ancestor of the
    task and declares that output), `{{inputs...}}`, `{{outputs...}}`, `{{workflow.parameters.X}}`,
    arguments against the template's inputs, volume mounts, output parameters' `valueFrom`, enums.

Every problem names the source and the field path:
    distill.yaml: spec.templates[2].dag.tasks[4].depends: unknown task 'finetun' (tasks are ...)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

from workflows.runner import TEMPLATE_TAG, ancestors, dag_dependencies, iter_strings

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
    templates = [t if isinstance(t, dict) else {} for t in spec.get("templates") or []]
    by_name = {t.get("name"): t for t in templates}
    names = ", ".join(str(t.get("name")) for t in templates)
    wf_params = {p.get("name"): p for p in (spec.get("arguments") or {}).get("parameters") or []}
    volumes = {v.get("name") for v in spec.get("volumes") or []}
    volumes |= {(c.get("metadata") or {}).get("name") for c in spec.get("volumeClaimTemplates") or []}

    seen: set[str] = set()
    for i, t in enumerate(templates):
        if t.get("name") in seen:
            problems.append(f"spec.templates[{i}].name: template '{t.get('name')}' is defined twice")
        seen.add(t.get("name"))
    entry = spec.get("entrypoint")
    if entry not in by_name:
        problems.append(f"spec.entrypoint: unknown template '{entry}' (templates are {names})")
    else:
        problems += _argument_problems(by_name[entry], "spec.arguments", {p: {} for p in wf_params}, {}, "spec.entrypoint")

    for j, p in enumerate((spec.get("arguments") or {}).get("parameters") or []):
        problems += _enum_problem(p, f"spec.arguments.parameters[{j}]")

    def workflow_ref(path: str, name: str) -> str | None:
        if name.startswith("workflow.parameters.") and name[20:] not in wf_params:
            return f"{path}: '{{{{{name}}}}}': no workflow parameter '{name[20:]}' (spec.arguments has {', '.join(map(str, wf_params)) or 'none'})"
        return None

    for path, text in iter_strings(spec.get("arguments"), "spec.arguments"):
        for m in TEMPLATE_TAG.finditer(text):
            if (p := workflow_ref(path, m.group(1).strip())) is not None:
                problems.append(p)

    for i, t in enumerate(templates):
        tp = f"spec.templates[{i}]"
        inputs = t.get("inputs") or {}
        outputs = t.get("outputs") or {}
        in_params = {p.get("name") for p in inputs.get("parameters") or []}
        in_arts = {a.get("name") for a in inputs.get("artifacts") or []}
        for j, p in enumerate(inputs.get("parameters") or []):
            problems += _enum_problem(p, f"{tp}.inputs.parameters[{j}]")
        is_dag = "dag" in t
        for j, p in enumerate(outputs.get("parameters") or []):
            vf = p.get("valueFrom")
            if not vf and "value" not in p:
                problems.append(f"{tp}.outputs.parameters[{j}]: output parameter '{p.get('name')}' has no valueFrom")
            elif vf and is_dag and "parameter" not in vf and "expression" not in vf:
                problems.append(f"{tp}.outputs.parameters[{j}].valueFrom: a DAG output needs valueFrom.parameter")
            elif vf and not is_dag and not any(k in vf for k in ("path", "jsonPath", "jqFilter", "event", "supplied", "configMapKeyRef", "expression", "parameter")):
                problems.append(f"{tp}.outputs.parameters[{j}].valueFrom: says nowhere to read '{p.get('name')}' from (set path)")
        local_volumes = volumes | {v.get("name") for v in t.get("volumes") or []}
        for key in ("container", "script"):
            for j, m in enumerate((t.get(key) or {}).get("volumeMounts") or []):
                if m.get("name") not in local_volumes:
                    problems.append(f"{tp}.{key}.volumeMounts[{j}].name: no volume '{m.get('name')}' in spec.volumes, "
                                    f"spec.volumeClaimTemplates or the template's volumes (have {', '.join(sorted(map(str, local_volumes))) or 'none'})")

        def own_ref(path: str, name: str, allow_path_vars: bool) -> str | None:
            parts = name.split(".")
            if parts[:2] == ["inputs", "parameters"] and len(parts) == 3 and parts[2] not in in_params:
                return f"{path}: '{{{{{name}}}}}': template '{t.get('name')}' has no input parameter '{parts[2]}' (inputs: {', '.join(sorted(map(str, in_params))) or 'none'})"
            if parts[:2] == ["inputs", "artifacts"] and len(parts) >= 3 and parts[2] not in in_arts:
                return f"{path}: '{{{{{name}}}}}': template '{t.get('name')}' has no input artifact '{parts[2]}' (inputs: {', '.join(sorted(map(str, in_arts))) or 'none'})"
            if allow_path_vars and parts[0] == "outputs" and len(parts) == 4 and parts[1] in ("parameters", "artifacts"):
                declared = {o.get("name") for o in outputs.get(parts[1]) or []}
                if parts[2] not in declared:
                    return f"{path}: '{{{{{name}}}}}': template '{t.get('name')}' declares no output {parts[1][:-1]} '{parts[2]}'"
            return workflow_ref(path, name)

        if not is_dag:
            for path, text in iter_strings({k: v for k, v in t.items() if k != "name"}, tp):
                for m in TEMPLATE_TAG.finditer(text):
                    if (p := own_ref(path, m.group(1).strip(), True)) is not None:
                        problems.append(p)
            continue

        deps, _, graph_problems = dag_dependencies(t, tp)
        problems += graph_problems
        tasks = (t.get("dag") or {}).get("tasks") or []
        task_by_name = {x.get("name"): x for x in tasks}

        def task_ref(path: str, name: str, allowed: set[str] | None, has_item: bool) -> str | None:
            parts = name.split(".")
            if parts[0] == "item":
                return None if has_item else f"{path}: '{{{{{name}}}}}' outside withItems/withParam"
            if parts[0] != "tasks" or len(parts) < 3:
                return own_ref(path, name, False)
            x = parts[1]
            if x not in task_by_name:
                return f"{path}: '{{{{{name}}}}}': unknown task '{x}' (tasks are {', '.join(map(str, task_by_name))})"
            if allowed is not None and x not in allowed:
                return f"{path}: '{{{{{name}}}}}': task '{x}' is not a dependency of this task; add it to depends"
            producer = by_name.get(task_by_name[x].get("template"))
            if producer is None:
                return None  # reported as a dangling template
            if parts[2] == "ip" and not producer.get("daemon"):
                return f"{path}: '{{{{{name}}}}}': template '{producer.get('name')}' of task '{x}' is not a daemon, it has no ip"
            if parts[2] == "outputs" and len(parts) == 5 and parts[3] in ("parameters", "artifacts"):
                declared = {o.get("name") for o in (producer.get("outputs") or {}).get(parts[3]) or []}
                if parts[4] not in declared:
                    return (f"{path}: '{{{{{name}}}}}': template '{producer.get('name')}' of task '{x}' declares no output "
                            f"{parts[3][:-1]} '{parts[4]}' (it has {', '.join(sorted(map(str, declared))) or 'none'})")
            return None

        for j, task in enumerate(tasks):
            path = f"{tp}.dag.tasks[{j}]"
            target = by_name.get(task.get("template"))
            if "template" in task and target is None:
                problems.append(f"{path}.template: unknown template '{task.get('template')}' (templates are {names})")
            allowed = ancestors(deps, task.get("name"))
            has_item = any(k in task for k in ("withItems", "withParam", "withSequence"))
            for key in ("arguments", "when", "withParam", "withItems"):
                for spath, text in iter_strings(task.get(key), f"{path}.{key}"):
                    for m in TEMPLATE_TAG.finditer(text):
                        if not m.group(1).strip().startswith("=") and (p := task_ref(spath, m.group(1).strip(), allowed, has_item)) is not None:
                            problems.append(p)
            if target is not None:
                args = task.get("arguments") or {}
                problems += _argument_problems(target, f"{path}.arguments",
                                               {p.get("name"): p for p in args.get("parameters") or []},
                                               {a.get("name"): a for a in args.get("artifacts") or []}, path)
        for spath, text in iter_strings(outputs, f"{tp}.outputs"):
            for m in TEMPLATE_TAG.finditer(text):
                if (p := task_ref(spath, m.group(1).strip(), None, False)) is not None:
                    problems.append(p)
    return problems


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


def lint_workflow(doc: dict, source: str = "<workflow>") -> list[str]:
    """Problems of a rendered Workflow, each "<source>: <field path>: <what is wrong>"."""
    if not isinstance(doc, dict):
        return [f"{source}: not a mapping"]
    problems = []
    if doc.get("kind") != "Workflow":
        problems.append(f"kind: expected Workflow, got {doc.get('kind')!r}")
    problems += schema_problems(doc)
    problems += reference_problems(doc)
    return [f"{source}: {p}" for p in dict.fromkeys(problems)]


def lint_file(path: str | Path) -> list[str]:
    """lint_workflow for every document of a YAML file."""
    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        return [f"{path.name}: cannot read: {e}"]
    if not docs:
        return [f"{path.name}: no YAML document"]
    problems = []
    for k, doc in enumerate(docs):
        problems += lint_workflow(doc, path.name if len(docs) == 1 else f"{path.name}#{k}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.lint", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="rendered Workflow YAML files")
    args = parser.parse_args(argv)
    problems = [p for f in args.files for p in lint_file(f)]
    for p in problems:
        print(p)
    if not problems:
        print(f"{len(args.files)} file(s) clean")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
