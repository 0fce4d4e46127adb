"""The Kubernetes objects a workflow runs against: what `kubectl apply -k k8s/<overlay>` would create.

Built with `kubectl kustomize` when the tool venv has it (scripts/check_k8s.sh --setup), else read
from the kustomizations directly; `kubellm lint`'s cluster checks look names up in them.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Kinds kustomize's namespace transformer leaves alone.
CLUSTER_SCOPED = frozenset({
    "Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding", "StorageClass", "PersistentVolume",
    "CustomResourceDefinition", "IngressClass", "RuntimeClass", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "APIService", "CSIDriver", "VolumeSnapshotClass",
    "ClusterWorkflowTemplate"})


def k8s_root(k8s_dir: str | Path) -> Path:
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
    target = k8s_root(k8s_dir) / overlay
    if _kustomization_file(target) is None:
        raise FileNotFoundError(f"{target}: no kustomization.yaml (overlays are {_overlays(k8s_root(k8s_dir))})")
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
        f = k8s_root(k8s_dir) / "required-secrets.yaml"
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
