"""`kubellm lint`'s cluster checks: what a rendered workflow needs from the cluster and its images.

  - every ServiceAccount, PriorityClass, PVC, ConfigMap (and key: semaphores, memoization cache,
    artifact repository) and Secret (and key) the workflow names is built from the overlay, or
    is a Secret listed in k8s/required-secrets.yaml;
  - images are pinned: no untagged image and no `:latest` (an image taken from a workflow
    parameter is checked through the parameter's default value);
  - every container runs as non-root and states requests and limits for cpu and memory;
  - templates that call a network service have a retryStrategy, and long steps report progress.

The objects come from workflows.k8s_objects; workflows.lint runs these checks on each file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Collection, Iterator, Mapping

from workflows.k8s_objects import CLUSTER_SCOPED, ROOT, load_required_secrets
from workflows.refs import TEMPLATE_TAG, iter_strings, spec_templates

CLUSTER_CHECKS = ("objects", "images", "security", "resources", "retry", "progress")
# Steps that run long enough for the Argo UI to need their progress ($ARGO_PROGRESS_FILE),
# written by steps._io.Progress.
LONG_STEPS = ("generate", "query", "finetune", "evaluate", "harvest")
NETWORK_FLAGS = ("--url", "--served-url", "--teacher-url")
DEFAULT_REPO = "<default artifact repository>"
_LOCATIONS = ("s3", "gcs", "azure", "oss", "hdfs", "http", "git", "raw", "artifactory")
_IP_TAG = re.compile(r"\{\{\s*(tasks|steps)\.([^.}\s]+)\.ip\s*\}\}")
_WHOLE_TAG = re.compile(r"\s*\{\{\s*([^{}]+?)\s*\}\}\s*")
_PYTHON_M = re.compile(r"\bpython[\d.]*\s+-m\s+([\w.]+)")


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


def workflow_refs(spec: dict, sp: str = "spec") -> Iterator[Ref]:
    """Every object a workflow spec names, with the path of the field that names it."""
    yield from _pod_refs(sp, spec)
    if spec.get("artifactRepositoryRef"):
        r = spec["artifactRepositoryRef"]
        yield (f"{sp}.artifactRepositoryRef.configMap", "ConfigMap", str(r.get("configMap", "artifact-repositories")),
               r.get("key", DEFAULT_REPO))
    repo_reported = bool(spec.get("artifactRepositoryRef"))
    for template in spec_templates(spec, sp):
        t, base = template.body, template.path
        yield from _pod_refs(base, t)
        cache = ((t.get("memoize") or {}).get("cache") or {}).get("configMap") or {}
        if cache:
            yield f"{base}.memoize.cache.configMap.name", "ConfigMap/Cache", str(cache.get("name", "")), None
        for path, c in template.containers():
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
    for template in spec_templates(spec, sp):
        tp = template.path
        in_params = _param_defaults((template.body.get("inputs") or {}).get("parameters"), f"{tp}.inputs.parameters")
        for path, c in template.containers():
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
    for template in spec_templates(spec, sp):
        t, tp = template.body, template.path
        tsc = t.get("securityContext") or {}
        if tsc.get("runAsUser") is not None and str(tsc["runAsUser"]) == "0":
            problems.append(f"{tp}.securityContext.runAsUser: 0 runs template '{t.get('name')}' as root: "
                            "use a non-root UID such as 1000")
        for path, c in template.containers():
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
    for template in spec_templates(spec, sp):
        t = template.body
        for path, c in template.containers():
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
    found = list(spec_templates(spec, sp))
    by_name = {t.name: t.body for t in found}
    reasons: dict[str, list[str]] = {}
    for template in found:
        for path, call in template.calls():
            for spath, text in iter_strings(call.get("arguments"), f"{path}.arguments"):
                if (m := _IP_TAG.search(text)) and call.get("template") in by_name:
                    reasons.setdefault(call["template"], []).append(
                        f"{spath} passes it the address {m.group(0)} of '{m.group(2)}'")
    for t in (template.body for template in found):
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
    for template in spec_templates(spec, sp):
        t, tp = template.body, template.path
        if t.get("name") not in reasons:
            continue
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


_STEPS_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(steps\.\w+)[ \t]+import|import[ \t]+(steps\.\w+)|from[ \t]+steps[ \t]+import[ \t]+([\w, \t]+))",
                           re.MULTILINE)


def _step_files(module: str, repo_root: Path) -> list[Path]:
    """The files of a step module (of every module of a package), and of the public steps modules they
    import: a step may leave its row loop, and so its progress, to one of them."""
    rel = Path(*module.split("."))
    if (repo_root / rel.with_suffix(".py")).is_file():
        files = [repo_root / rel.with_suffix(".py")]
    elif (repo_root / rel / "__init__.py").is_file():  # a package: any of its modules may report
        files = sorted((repo_root / rel).glob("*.py"))
    else:
        return []
    for f in list(files):
        for m in _STEPS_IMPORT.finditer(f.read_text(errors="replace")):
            names = [m.group(1) or m.group(2)] if not m.group(3) else [f"steps.{n.strip()}" for n in m.group(3).split(",")]
            for name in names:
                dep = repo_root / Path(*name.split(".")).with_suffix(".py")
                if not name.split(".")[-1].startswith("_") and dep.is_file() and dep not in files:
                    files.append(dep)
    return files


def _progress_problems(spec: dict, sp: str, repo_root: Path) -> list[str]:
    problems = []
    for template in spec_templates(spec, sp):
        t = template.body
        for path, c in template.containers():
            found = _step_module(c, path)
            if found is None or not found[0].startswith("steps."):
                continue
            module, field = found
            rel = Path(*module.split("."))
            files = _step_files(module, repo_root)
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
                                f"neither {rel.with_suffix('.py').as_posix()} nor a steps module it imports creates a "
                                "Progress(...): the Argo UI would show no progress for it (report it with "
                                "steps._io.Progress)")
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
