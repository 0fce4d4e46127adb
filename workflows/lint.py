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

Cluster checks (`lint_cluster`, run by `kubellm lint` against the objects built from k8s/):
  - every ServiceAccount, PriorityClass, PVC, ConfigMap (and key: semaphores, memoization cache,
    artifact repository) and Secret (and key) the workflow names is built from the overlay, or
    is a Secret listed in k8s/required-secrets.yaml;
  - images are pinned: no untagged image and no `:latest` (an image taken from a workflow
    parameter is checked through the parameter's default value);
  - every container runs as non-root and states requests and limits for cpu and memory;
  - templates that call a network service have a retryStrategy, and long steps report progress.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import hashlib
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping

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


def _read_docs(path: Path) -> tuple[list, str | None]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        return [], f"{path.name}: cannot read: {e}"
    return docs, None if docs else f"{path.name}: no YAML document"


def lint_file(path: str | Path) -> list[str]:
    """lint_workflow for every document of a YAML file."""
    path = Path(path)
    docs, error = _read_docs(path)
    if error:
        return [error]
    return _each_doc(path, docs, lint_workflow)


def _each_doc(path: Path, docs: list[dict], check) -> list[str]:
    """Run `check(doc, name)` on every document, named `file` or `file#k` in a multi-document file."""
    problems = []
    for k, doc in enumerate(docs):
        problems += check(doc, path.name if len(docs) == 1 else f"{path.name}#{k}")
    return problems


# --------------------------------------------------------------------------- cluster checks

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_CHECKS = ("objects", "images", "security", "resources", "retry", "progress")
# Steps that run long enough for the Argo UI to need their progress ($ARGO_PROGRESS_FILE),
# written by steps._io.Progress.
LONG_STEPS = ("generate", "query", "finetune", "evaluate", "harvest")
NETWORK_FLAGS = ("--url", "--served-url", "--teacher-url")
DEFAULT_REPO = "<default artifact repository>"
# Kinds kustomize's namespace transformer leaves alone.
CLUSTER_SCOPED = frozenset({
    "Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding", "StorageClass", "PersistentVolume",
    "CustomResourceDefinition", "IngressClass", "RuntimeClass", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "APIService", "CSIDriver", "VolumeSnapshotClass",
    "ClusterWorkflowTemplate"})
_LOCATIONS = ("s3", "gcs", "azure", "oss", "hdfs", "http", "git", "raw", "artifactory")
_IP_TAG = re.compile(r"\{\{\s*(tasks|steps)\.([^.}\s]+)\.ip\s*\}\}")
_WHOLE_TAG = re.compile(r"\s*\{\{\s*([^{}]+?)\s*\}\}\s*")
_PYTHON_M = re.compile(r"\bpython[\d.]*\s+-m\s+([\w.]+)")


def _k8s_root(k8s_dir: str | Path) -> Path:
    """k8s_dir as given (relative to the working folder), else the one of the kubellm checkout."""
    p = Path(k8s_dir)
    if not p.is_absolute() and not p.exists() and (ROOT / p).is_dir():
        p = ROOT / p
    if not p.is_dir():
        raise FileNotFoundError(f"{k8s_dir}: no such folder (the kustomize base and overlays, k8s/ in the kubellm repo)")
    return p


def kubectl_path() -> Path:
    """The kubectl (with kustomize) of scripts/check_k8s.sh's tool venv; may not exist."""
    return Path(os.environ.get("KUBELLM_K8S_VENV", ROOT / ".venv-k8s")) / "bin" / "kubectl"


def load_k8s_objects(k8s_dir: str | Path = "k8s", overlay: str = "overlays/cpu", *,
                     use_kubectl: bool | None = None) -> list[dict]:
    """The objects `kubectl apply -k <k8s_dir>/<overlay>` would create.

    Built with `kubectl kustomize` when the tool venv's kubectl exists (use_kubectl=None), else
    by reading the kustomizations directly: resources, components, configMap/secret generators,
    strategic-merge patches, namespace, namePrefix/nameSuffix. JSON 6902 patches and remote
    resources need kubectl. Raises FileNotFoundError or ValueError, naming the file.
    """
    target = _k8s_root(k8s_dir) / overlay
    if _kustomization_file(target) is None:
        raise FileNotFoundError(f"{target}: no kustomization.yaml (overlays are {_overlays(_k8s_root(k8s_dir))})")
    kubectl = kubectl_path()
    if use_kubectl is None:
        use_kubectl = kubectl.exists()
    if use_kubectl:
        try:
            r = subprocess.run([str(kubectl), "kustomize", str(target)], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            raise ValueError(f"{kubectl} kustomize {target}: {e}") from e
        if r.returncode != 0:
            raise ValueError(f"kubectl kustomize {target} failed: {r.stderr.strip()}")
        return [d for d in yaml.safe_load_all(r.stdout) if isinstance(d, dict)]
    return _build_kustomization(target, ())


def load_required_secrets(k8s_dir: str | Path = "k8s") -> dict[str, list[str]]:
    """Secrets created by hand (k8s/required-secrets.yaml): name -> keys. {} if there is no such file."""
    try:
        f = _k8s_root(k8s_dir) / "required-secrets.yaml"
    except FileNotFoundError:
        return {}
    if not f.is_file():
        return {}
    try:
        doc = yaml.safe_load(f.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{f}: not YAML: {e}") from e
    return {s["name"]: [str(k) for k in s.get("keys") or []] for s in doc.get("secrets") or [] if s.get("name")}


def _overlays(root: Path) -> str:
    found = sorted(str(p.parent.relative_to(root)) for p in root.glob("**/kustomization.yaml"))
    return ", ".join(found) or "none"


def _kustomization_file(folder: Path) -> Path | None:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (folder / name).is_file():
            return folder / name
    return None


def _yaml_objects(path: Path) -> list[dict]:
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not YAML: {e}") from e
    out = []
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "List":
            out += [i for i in d.get("items") or [] if isinstance(i, dict)]
        elif isinstance(d, dict) and d.get("kind"):
            out.append(d)
    return out


def _merge(base: dict, patch: dict) -> dict:
    """Strategic merge, simplified: maps merge key by key, lists and scalars are replaced."""
    out = dict(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _generated(folder: Path, kfile: Path, g: dict, kind: str, options: dict) -> dict:
    data: dict[str, str] = {}
    for lit in g.get("literals") or []:
        k, _, v = str(lit).partition("=")
        data[k] = v
    for f in g.get("files") or []:
        key, eq, path = str(f).partition("=")
        if not eq:
            key, path = Path(key).name, key
        try:
            data[key] = (folder / path).read_text()
        except OSError as e:
            raise FileNotFoundError(f"{kfile}: {kind.lower()} generator {g.get('name')}: files: {f}: {e}") from e
    for env in list(g.get("envs") or []) + ([g["env"]] if g.get("env") else []):
        for line in (folder / env).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                k, _, v = line.partition("=")
                data[k.strip()] = v
    opts = {**options, **(g.get("options") or {})}
    name = g.get("name", "")
    if not opts.get("disableNameSuffixHash"):
        # kustomize appends a content hash, so a workflow cannot name the plain name
        name += "-" + hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()[:10]
    meta: dict[str, Any] = {"name": name}
    if g.get("namespace"):
        meta["namespace"] = g["namespace"]
    for key in ("labels", "annotations"):
        if opts.get(key):
            meta[key] = dict(opts[key])
    return {"apiVersion": "v1", "kind": kind, "metadata": meta, "data": data,
            "_behavior": g.get("behavior", "create"), "_generator_name": g.get("name", "")}


def _build_kustomization(folder: Path, stack: tuple, objects: list[dict] | None = None) -> list[dict]:
    """Objects of one kustomization (or of a Component, which works on its parent's objects)."""
    kfile = _kustomization_file(folder)
    if kfile is None:
        raise FileNotFoundError(f"{folder}: no kustomization.yaml")
    if folder.resolve() in stack:
        raise ValueError(f"{kfile}: includes itself through {' -> '.join(map(str, stack))}")
    stack = stack + (folder.resolve(),)
    try:
        k = yaml.safe_load(kfile.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{kfile}: not YAML: {e}") from e
    objects = [] if objects is None else objects
    for entry in list(k.get("resources") or []) + list(k.get("bases") or []):
        p = folder / entry
        if p.is_dir():
            objects += _build_kustomization(p, stack)
        elif p.is_file():
            objects += _yaml_objects(p)
        else:
            raise FileNotFoundError(f"{kfile}: resources: {entry}: no such file or folder "
                                    "(remote resources need kubectl kustomize: scripts/check_k8s.sh --setup)")
    for key, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for g in k.get(key) or []:
            made = _generated(folder, kfile, g, kind, k.get("generatorOptions") or {})
            behavior, plain = made.pop("_behavior"), made.pop("_generator_name")
            old = next((o for o in objects if o.get("kind") == kind
                        and re.sub(r"-[0-9a-f]{10}$", "", (o.get("metadata") or {}).get("name", "")) == plain), None)
            if behavior in ("merge", "replace") and old is not None:
                old["data"] = {**(old.get("data") or {}), **made["data"]} if behavior == "merge" else made["data"]
            else:
                objects.append(made)
    for entry in k.get("components") or []:
        _build_kustomization(folder / entry, stack, objects)
    texts = []  # strategic-merge patches, from files or inline
    for p in list(k.get("patches") or []) + list(k.get("patchesStrategicMerge") or []):
        ref = (p.get("path") or p.get("patch")) if isinstance(p, dict) else p
        if not ref:
            continue
        texts.append((folder / ref).read_text() if "\n" not in ref and (folder / ref).is_file() else ref)
    for text in texts:
        for patch in yaml.safe_load_all(text):
            if not isinstance(patch, dict) or "kind" not in patch:
                continue  # a JSON 6902 patch: operations, no object (kubectl kustomize applies it)
            name = (patch.get("metadata") or {}).get("name")
            for i, o in enumerate(objects):
                if o.get("kind") == patch["kind"] and (o.get("metadata") or {}).get("name") == name:
                    if patch.get("$patch") == "delete":
                        del objects[i]
                    else:
                        objects[i] = _merge(o, {k2: v for k2, v in patch.items() if k2 != "$patch"})
                    break
            else:
                raise ValueError(f"{kfile}: patches: no {patch['kind']} '{name}' to patch")
    ns, prefix, suffix = k.get("namespace"), k.get("namePrefix") or "", k.get("nameSuffix") or ""
    # transformers act on everything accumulated so far: a Component's on its parent's objects too
    for o in objects:
        meta = o.setdefault("metadata", {})
        if ns and o.get("kind") not in CLUSTER_SCOPED:
            meta["namespace"] = ns
        if (prefix or suffix) and o.get("kind") != "Namespace":
            meta["name"] = f"{prefix}{meta.get('name', '')}{suffix}"
    return objects


def _workflow_spec(doc: dict) -> tuple[dict, str] | None:
    kind = doc.get("kind")
    if kind in ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate"):
        spec = doc.get("spec")
        return (spec, "spec") if isinstance(spec, dict) else None
    if kind == "CronWorkflow":
        spec = (doc.get("spec") or {}).get("workflowSpec")
        return (spec, "spec.workflowSpec") if isinstance(spec, dict) else None
    return None


Ref = tuple[str, str, str, "str | None"]  # (field path of the name, kind, name, key or None)


def _container_refs(base: str, c: dict) -> Iterator[Ref]:
    for i, e in enumerate(c.get("env") or []):
        vf = (e or {}).get("valueFrom") or {}
        for ref, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            if ref in vf:
                yield f"{base}.env[{i}].valueFrom.{ref}.name", kind, str(vf[ref].get("name", "")), vf[ref].get("key")
    for i, e in enumerate(c.get("envFrom") or []):
        for ref, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
            if ref in (e or {}):
                yield f"{base}.envFrom[{i}].{ref}.name", kind, str(e[ref].get("name", "")), None


def _pod_refs(base: str, d: dict) -> Iterator[Ref]:
    if d.get("serviceAccountName"):
        yield f"{base}.serviceAccountName", "ServiceAccount", str(d["serviceAccountName"]), None
    if (d.get("executor") or {}).get("serviceAccountName"):
        yield f"{base}.executor.serviceAccountName", "ServiceAccount", str(d["executor"]["serviceAccountName"]), None
    for f in ("priorityClassName", "podPriorityClassName"):
        if d.get(f):
            yield f"{base}.{f}", "PriorityClass", str(d[f]), None
    for i, v in enumerate(d.get("volumes") or []):
        if "persistentVolumeClaim" in v:
            yield (f"{base}.volumes[{i}].persistentVolumeClaim.claimName", "PersistentVolumeClaim",
                   str(v["persistentVolumeClaim"].get("claimName", "")), None)
        if "configMap" in v:
            yield f"{base}.volumes[{i}].configMap.name", "ConfigMap", str(v["configMap"].get("name", "")), None
        if "secret" in v:
            yield f"{base}.volumes[{i}].secret.secretName", "Secret", str(v["secret"].get("secretName", "")), None
    for i, s in enumerate(d.get("imagePullSecrets") or []):
        yield f"{base}.imagePullSecrets[{i}].name", "Secret", str(s.get("name", "")), None
    sync = d.get("synchronization") or {}
    sems = [(f"{base}.synchronization.semaphores[{i}]", s) for i, s in enumerate(sync.get("semaphores") or [])]
    if sync.get("semaphore"):
        sems.append((f"{base}.synchronization.semaphore", sync["semaphore"]))
    for path, s in sems:
        ref = s.get("configMapKeyRef")
        if ref is not None:  # a database semaphore has no ConfigMap
            yield f"{path}.configMapKeyRef.name", "ConfigMap", str(ref.get("name", "")), ref.get("key")


def _containers(t: dict, tp: str) -> Iterator[tuple[str, dict]]:
    """Every container of a template's pod that kubellm writes (Argo adds init and wait)."""
    for key in ("container", "script"):
        if isinstance(t.get(key), dict):
            yield f"{tp}.{key}", t[key]
    for k, c in enumerate((t.get("containerSet") or {}).get("containers") or []):
        yield f"{tp}.containerSet.containers[{k}]", c
    for group in ("initContainers", "sidecars"):
        for k, c in enumerate(t.get(group) or []):
            yield f"{tp}.{group}[{k}]", c


def workflow_refs(spec: dict, sp: str = "spec") -> Iterator[Ref]:
    """Every object a workflow spec names, with the path of the field that names it."""
    yield from _pod_refs(sp, spec)
    if spec.get("artifactRepositoryRef"):
        r = spec["artifactRepositoryRef"]
        yield (f"{sp}.artifactRepositoryRef.configMap", "ConfigMap", str(r.get("configMap", "artifact-repositories")),
               r.get("key", DEFAULT_REPO))
    repo_reported = bool(spec.get("artifactRepositoryRef"))
    for ti, t in enumerate(spec.get("templates") or []):
        if not isinstance(t, dict):
            continue
        base = f"{sp}.templates[{ti}]"
        yield from _pod_refs(base, t)
        cache = ((t.get("memoize") or {}).get("cache") or {}).get("configMap") or {}
        if cache:
            yield f"{base}.memoize.cache.configMap.name", "ConfigMap/Cache", str(cache.get("name", "")), None
        for path, c in _containers(t, base):
            yield from _container_refs(path, c)
        # artifacts without a location of their own go through the default artifact repository
        for side in ("inputs", "outputs"):
            arts = (t.get(side) or {}).get("artifacts") or []
            if not repo_reported and any(not any(k in a for k in _LOCATIONS) for a in arts):
                repo_reported = True
                yield f"{base}.{side}.artifacts", "ConfigMap", "artifact-repositories", DEFAULT_REPO


def _param_defaults(params: list | None, base: str) -> dict[str, tuple[str, str]]:
    """name -> (default value, field path) of declared parameters that have one."""
    out = {}
    for k, p in enumerate(params or []):
        if not isinstance(p, dict) or not p.get("name"):
            continue
        for key in ("value", "default"):
            if p.get(key) is not None:
                out[str(p["name"])] = (str(p[key]), f"{base}[{k}].{key}")
                break
    return out


def _resolve(text: str, wf_params: Mapping, in_params: Mapping) -> tuple[str | None, list[str]]:
    """text with {{workflow.parameters.X}} and {{inputs.parameters.X}} replaced by their defaults.

    Returns (None, []) when a tag has no default here (chosen at submit or run time), else the
    value and the field paths it came from.
    """
    via: list[str] = []

    def sub(m: re.Match) -> str:
        name = m.group(1).strip()
        for prefix, table in (("workflow.parameters.", wf_params), ("inputs.parameters.", in_params)):
            if name.startswith(prefix) and name[len(prefix):] in table:
                value, path = table[name[len(prefix):]]
                via.append(path)
                return value
        raise LookupError(name)

    try:
        return TEMPLATE_TAG.sub(sub, text), via
    except LookupError:
        return None, []


def _keyfield(field: str) -> str:
    return re.sub(r"\.(name|secretName)$", ".key", field)


def _object_problems(doc: dict, spec: dict, sp: str, objects: list[dict], built_from: str,
                     required_secrets: Mapping[str, Collection[str]], wf_params: Mapping) -> list[str]:
    problems = []
    namespaced = [o for o in objects if o.get("kind") not in CLUSTER_SCOPED]
    defined_ns = sorted({(o.get("metadata") or {}).get("name") for o in objects if o.get("kind") == "Namespace"}
                        | {(o.get("metadata") or {}).get("namespace") for o in namespaced} - {None})
    ns = (doc.get("metadata") or {}).get("namespace")
    if ns and defined_ns and ns not in defined_ns:
        problems.append(f"metadata.namespace: '{ns}', but {built_from} sets up namespace {', '.join(defined_ns)}")
        ns = None  # reported once; look the names up in every namespace instead of failing each
    target_ns = ns or (defined_ns[0] if len(defined_ns) == 1 else None)
    index = {}
    for o in objects:
        meta = o.get("metadata") or {}
        if o.get("kind") in CLUSTER_SCOPED or target_ns is None or meta.get("namespace") in (None, target_ns):
            index.setdefault((o.get("kind"), meta.get("name")), o)
    templates = [t if isinstance(t, dict) else {} for t in spec.get("templates") or []]
    for field, kind, name, key in workflow_refs(spec, sp):
        m = re.match(re.escape(sp) + r"\.templates\[(\d+)\]", field)
        in_params = {}
        if m and int(m.group(1)) < len(templates):
            in_params = _param_defaults((templates[int(m.group(1))].get("inputs") or {}).get("parameters"),
                                        f"{m.group(0)}.inputs.parameters")
        via = ""
        if "{{" in name or (key and "{{" in str(key)):
            rname, paths = _resolve(name, wf_params, in_params)
            rkey, kpaths = _resolve(str(key), wf_params, in_params) if key else (None, [])
            if rname is None:
                continue  # chosen at submit time
            if key and rkey is None:
                key = None
            elif key:
                key = rkey
            via = f" ('{name}' through {', '.join(dict.fromkeys(paths + kpaths))})" if paths or kpaths else ""
            name = rname
        base_kind = kind.split("/")[0]
        obj = index.get((base_kind, name))
        if base_kind == "Secret":
            if obj is not None:
                keys = sorted({**(obj.get("data") or {}), **(obj.get("stringData") or {})})
            elif name in required_secrets:
                keys = list(required_secrets[name])
            else:
                problems.append(f"{field}: Secret '{name}'{via} is neither built from {built_from} nor "
                                f"listed in k8s/required-secrets.yaml (listed: {', '.join(sorted(required_secrets)) or 'none'})")
                continue
            if key and key not in keys:
                problems.append(f"{_keyfield(field)}: Secret '{name}' has no key '{key}'{via} "
                                f"(keys: {', '.join(keys)})")
            continue
        if obj is None:
            defined = sorted(str(n) for (k, n) in index if k == base_kind)
            problems.append(f"{field}: {base_kind} '{name}'{via} is not defined by {built_from} "
                            f"(it defines: {', '.join(defined) or 'none'})")
        elif kind == "ConfigMap/Cache":
            if ((obj.get("metadata") or {}).get("labels") or {}).get("workflows.argoproj.io/configmap-type") != "Cache":
                problems.append(f"{field}: ConfigMap '{name}' lacks the label "
                                "workflows.argoproj.io/configmap-type=Cache, so Argo will not use it as a cache")
        elif key == DEFAULT_REPO:
            default = ((obj.get("metadata") or {}).get("annotations") or {}).get(
                "workflows.argoproj.io/default-artifact-repository")
            if not default or default not in (obj.get("data") or {}):
                problems.append(f"{field}: ConfigMap '{name}' names no default repository (annotation "
                                "workflows.argoproj.io/default-artifact-repository and its data key)")
        elif key and key not in (obj.get("data") or {}):
            problems.append(f"{_keyfield(field)}: ConfigMap '{name}' has no key '{key}'{via} "
                            f"(keys: {', '.join(sorted(obj.get('data') or {})) or 'none'})")
    return problems


def image_problem(ref: str) -> str | None:
    """Why an image reference is not pinned, or None. A digest pins it whatever the tag."""
    ref = ref.strip()
    if not ref:
        return "no image"
    name, at, _digest = ref.partition("@")
    if at:
        return None
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return "no tag (the runtime pulls ':latest'): pin an exact version"
    if last.rsplit(":", 1)[1] == "latest":
        return "the moving tag 'latest': pin an exact version (and a digest where you can)"
    return None


def _image_problems(spec: dict, sp: str, wf_params: Mapping) -> list[str]:
    problems = []
    by_param: dict[str, tuple[str, str, list[str]]] = {}  # value path -> (value, problem, users)
    has_default_image = bool(((spec.get("templateDefaults") or {}).get("container") or {}).get("image"))
    for ti, t in enumerate(spec.get("templates") or []):
        if not isinstance(t, dict):
            continue
        tp = f"{sp}.templates[{ti}]"
        in_params = _param_defaults((t.get("inputs") or {}).get("parameters"), f"{tp}.inputs.parameters")
        for path, c in _containers(t, tp):
            image = c.get("image")
            if not image:
                if not (has_default_image and path.endswith(".container")):
                    problems.append(f"{path}.image: missing")
                continue
            image = str(image)
            if "{{" not in image:
                if (p := image_problem(image)) is not None:
                    problems.append(f"{path}.image: '{image}': {p}")
                continue
            whole = _WHOLE_TAG.fullmatch(image)
            if whole and whole.group(1).startswith("workflow.parameters.") and whole.group(1)[20:] in wf_params:
                value, vpath = wf_params[whole.group(1)[20:]]
                if (p := image_problem(value)) is not None:
                    by_param.setdefault(vpath, (value, p, []))[2].append(f"{path}.image")
                continue
            value, via = _resolve(image, wf_params, in_params)
            if value is not None and (p := image_problem(value)) is not None:
                problems.append(f"{path}.image: '{image}' is '{value}' by default ({', '.join(via)}): {p}")
    for vpath, (value, p, users) in by_param.items():
        problems.append(f"{vpath}: image '{value}' (the default image of {', '.join(users)}): {p}")
    return problems


def _security_problems(spec: dict, sp: str) -> list[str]:
    problems = []
    pod = spec.get("securityContext") or {}
    if pod.get("runAsUser") is not None and str(pod["runAsUser"]) == "0":
        problems.append(f"{sp}.securityContext.runAsUser: 0 runs every pod of the workflow as root "
                        "(Argo's init and wait containers too): use a non-root UID such as 1000")
    for ti, t in enumerate(spec.get("templates") or []):
        if not isinstance(t, dict):
            continue
        tp = f"{sp}.templates[{ti}]"
        tsc = t.get("securityContext") or {}
        if tsc.get("runAsUser") is not None and str(tsc["runAsUser"]) == "0":
            problems.append(f"{tp}.securityContext.runAsUser: 0 runs template '{t.get('name')}' as root: "
                            "use a non-root UID such as 1000")
        for path, c in _containers(t, tp):
            csc = c.get("securityContext") or {}
            if csc.get("runAsUser") is not None and str(csc["runAsUser"]) == "0":
                problems.append(f"{path}.securityContext.runAsUser: 0 runs template '{t.get('name')}' as root: "
                                "use a non-root UID such as 1000")
            for level, sc in ((f"{path}.securityContext", csc), (f"{tp}.securityContext", tsc),
                              (f"{sp}.securityContext", pod)):
                if sc.get("runAsNonRoot") is not None:
                    if sc["runAsNonRoot"] is not True:
                        problems.append(f"{level}.runAsNonRoot: {sc['runAsNonRoot']!r} lets template "
                                        f"'{t.get('name')}' run as root: set it to true")
                    break
            else:
                problems.append(f"{path}.securityContext.runAsNonRoot: not set here nor in {tp}.securityContext "
                                f"or {sp}.securityContext: template '{t.get('name')}' may run as root; set "
                                "runAsNonRoot: true")
    return list(dict.fromkeys(problems))


def _resource_problems(spec: dict, sp: str) -> list[str]:
    problems = []
    for ti, t in enumerate(spec.get("templates") or []):
        if not isinstance(t, dict):
            continue
        for path, c in _containers(t, f"{sp}.templates[{ti}]"):
            res = c.get("resources") or {}
            for side in ("requests", "limits"):
                missing = [r for r in ("cpu", "memory") if (res.get(side) or {}).get(r) in (None, "")]
                if missing:
                    problems.append(f"{path}.resources.{side}: no {' and no '.join(missing)} for template "
                                    f"'{t.get('name')}': every container states requests and limits for cpu and "
                                    "memory (scheduling, the namespace quota and neighbours depend on them)")
    return problems


def network_reasons(spec: dict, sp: str = "spec") -> dict[str, list[str]]:
    """Container templates that call a network service, by name, with why we think so.

    The heuristic: a container (or script) whose command, args or env reference a daemon's
    address (`{{tasks.X.ip}}`, `{{steps.X.ip}}`); whose args hold a URL flag (--url,
    --served-url, --teacher-url, also as --flag=value) or are exactly the `teacher-url`
    parameter; or that a DAG task / step calls with an argument holding such an address (a
    daemon client). Daemons themselves are servers, not clients.
    """
    templates = [t for t in spec.get("templates") or [] if isinstance(t, dict)]
    by_name = {t.get("name"): t for t in templates}
    reasons: dict[str, list[str]] = {}
    for ti, t in enumerate(spec.get("templates") or []):
        if not isinstance(t, dict):
            continue
        tp = f"{sp}.templates[{ti}]"
        callers: list[tuple[str, dict]] = []
        for j, task in enumerate((t.get("dag") or {}).get("tasks") or []):
            callers.append((f"{tp}.dag.tasks[{j}]", task))
        for j, group in enumerate(t.get("steps") or []):
            for k, step in enumerate(group if isinstance(group, list) else []):
                callers.append((f"{tp}.steps[{j}][{k}]", step))
        for path, call in callers:
            for spath, text in iter_strings(call.get("arguments"), f"{path}.arguments"):
                if (m := _IP_TAG.search(text)) and call.get("template") in by_name:
                    reasons.setdefault(call["template"], []).append(
                        f"{spath} passes it the address {m.group(0)} of '{m.group(2)}'")
    for t in templates:
        if t.get("daemon") or t.get("name") is None:
            continue
        for key in ("container", "script"):
            c = t.get(key)
            if not isinstance(c, dict):
                continue
            for _, text in iter_strings({k: c.get(k) for k in ("command", "args", "env", "source")}, key):
                if m := _IP_TAG.search(text):
                    reasons.setdefault(t["name"], []).append(f"{key} uses the address {m.group(0)}")
            for arg in [str(a) for a in c.get("args") or []] + [str(a) for a in c.get("command") or []]:
                flag = arg.split("=", 1)[0]
                whole = _WHOLE_TAG.fullmatch(arg)
                if flag in NETWORK_FLAGS:
                    reasons.setdefault(t["name"], []).append(f"argument {flag}")
                elif whole and whole.group(1).split(".")[-1] == "teacher-url":
                    reasons.setdefault(t["name"], []).append(f"argument {arg}")
    return {name: list(dict.fromkeys(r)) for name, r in reasons.items()
            if name in by_name and not by_name[name].get("daemon")
            and any(k in by_name[name] for k in ("container", "script", "containerSet"))}


def _retry_problems(spec: dict, sp: str) -> list[str]:
    problems = []
    reasons = network_reasons(spec, sp)
    for ti, t in enumerate(spec.get("templates") or []):
        if not isinstance(t, dict) or t.get("name") not in reasons:
            continue
        tp = f"{sp}.templates[{ti}]"
        why = "; ".join(reasons[t["name"]])
        rs = t.get("retryStrategy")
        if not rs:
            problems.append(f"{tp}.retryStrategy: missing: template '{t['name']}' calls a network service ({why}); "
                            "retry it (limit and backoff) so a server restart or a dropped connection does not fail the run")
        elif str(rs.get("limit", "")).strip() == "0":
            problems.append(f"{tp}.retryStrategy.limit: 0: template '{t['name']}' calls a network service ({why}) "
                            "and is never retried")
    return problems


def _step_module(c: dict, path: str) -> tuple[str, str] | None:
    """(module, field path) of `python -m MODULE` in a container's command and args."""
    argv = ([(f"{path}.command[{i}]", str(x)) for i, x in enumerate(c.get("command") or [])]
            + [(f"{path}.args[{i}]", str(x)) for i, x in enumerate(c.get("args") or [])])
    for k, (p, x) in enumerate(argv):
        if x == "-m" and k + 1 < len(argv) and k > 0 and re.fullmatch(r"(.*/)?python[\d.]*", argv[k - 1][1]):
            return argv[k + 1][1], argv[k + 1][0]
        if m := _PYTHON_M.search(x):  # sh -c "python -m steps.x ..."
            return m.group(1), p
    return None


def _progress_problems(spec: dict, sp: str, repo_root: Path) -> list[str]:
    problems = []
    for ti, t in enumerate(spec.get("templates") or []):
        if not isinstance(t, dict):
            continue
        tp = f"{sp}.templates[{ti}]"
        for path, c in _containers(t, tp):
            found = _step_module(c, path)
            if found is None or not found[0].startswith("steps."):
                continue
            module, field = found
            rel = Path(*module.split("."))
            if (repo_root / rel.with_suffix(".py")).is_file():
                files = [repo_root / rel.with_suffix(".py")]
            elif (repo_root / rel / "__init__.py").is_file():  # a package: any of its modules may report
                files = sorted((repo_root / rel).glob("*.py"))
            else:
                files = []
            if not files:
                problems.append(f"{field}: template '{t.get('name')}' runs {module}, but there is no "
                                f"{rel.with_suffix('.py').as_posix()} in the repository")
                continue
            deadline = t.get("activeDeadlineSeconds")
            try:
                long_running = deadline is not None and int(str(deadline)) > 60
            except ValueError:
                long_running = True  # set at submit time: may well be long
            if long_running and module.split(".")[1] in LONG_STEPS and not any(
                    "Progress(" in f.read_text(errors="replace") for f in files):
                problems.append(f"{field}: template '{t.get('name')}' runs {module} for up to {deadline} s, but "
                                f"{rel.with_suffix('.py').as_posix()} never creates a Progress(...): the Argo UI "
                                "would show no progress for it (report it with steps._io.Progress)")
    return problems


def lint_cluster(doc: dict, source: str, k8s_objects: list[dict], *,
                 required_secrets: Mapping[str, Collection[str]] | None = None, built_from: str = "k8s/",
                 repo_root: str | Path | None = None, checks: Collection[str] = CLUSTER_CHECKS) -> list[str]:
    """What a rendered workflow needs from the cluster and its images, each "<source>: <field path>: <problem>".

    k8s_objects: as built by `load_k8s_objects` (the overlay the workflow will run against);
    required_secrets: Secrets created by hand, name -> keys (default: k8s/required-secrets.yaml);
    built_from: how messages name the objects' origin; repo_root: where `python -m steps.X`
    modules are looked up (default: this checkout); checks: a subset of CLUSTER_CHECKS.
    Names and images set by a `{{...parameters.X}}` are checked through the parameter's
    default; ones with no default are chosen at submit time and not checked.
    """
    if not isinstance(doc, dict):
        return [f"{source}: not a mapping"]
    unknown = set(checks) - set(CLUSTER_CHECKS)
    if unknown:
        raise ValueError(f"unknown cluster checks {sorted(unknown)}; choose from {', '.join(CLUSTER_CHECKS)}")
    found = _workflow_spec(doc)
    if found is None:
        return []  # not a workflow: the strict lint says so
    spec, sp = found
    if required_secrets is None:
        required_secrets = load_required_secrets()
    wf_params = _param_defaults((spec.get("arguments") or {}).get("parameters"), f"{sp}.arguments.parameters")
    problems: list[str] = []
    if "objects" in checks:
        problems += _object_problems(doc, spec, sp, k8s_objects, built_from, required_secrets, wf_params)
    if "images" in checks:
        problems += _image_problems(spec, sp, wf_params)
    if "security" in checks:
        problems += _security_problems(spec, sp)
    if "resources" in checks:
        problems += _resource_problems(spec, sp)
    if "retry" in checks:
        problems += _retry_problems(spec, sp)
    if "progress" in checks:
        problems += _progress_problems(spec, sp, Path(repo_root) if repo_root is not None else ROOT)
    return [f"{source}: {p}" for p in dict.fromkeys(problems)]


def lint_cluster_file(path: str | Path, k8s_objects: list[dict], **kwargs) -> list[str]:
    """lint_cluster for every document of a YAML file, named as lint_file names them."""
    path = Path(path)
    docs, error = _read_docs(path)
    if error:
        return [error]
    return _each_doc(path, docs, lambda doc, name: lint_cluster(doc, name, k8s_objects, **kwargs))


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
