"""What a container template becomes on this machine: the argv, environment, working folder and deadlines
of one attempt, with container paths mapped to the run folder (the path rule of docs/runner.md)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable, Mapping

from workflows.runner.binding import Binder
from workflows.runner.errors import TaskError
from workflows.runner.expressions import as_str, k8s_expand, seconds, subst
from workflows.runner.localcluster import KEY_VALUE
from workflows.runner.state import Node
from workflows.runner.supported import check_pod_spec_patch

DAEMON_READY_CAP_S = 900.0  # give up on a daemon that is never ready after this long

# What a node inherits from the runner's environment; docs/runner.md gives the reason for each group.
# Everything else reaches a node only through its template's env, as in a pod, so a key exported for
# one step (OPENAI_API_KEY) reaches no model server and no other step.
INHERITED_ENV = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
    "VIRTUAL_ENV", "PYTHONPATH",
    "KUBELLM_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XDG_CACHE_HOME", "TORCH_HOME",
    "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR",
})
INHERITED_ENV_PREFIXES = ("LC_", "VLLM_")
# a prefix does not let a credential through (VLLM_API_KEY makes a server demand a key): declare it instead
_CREDENTIAL = re.compile(r"_(KEY|TOKEN|SECRET|PASSWORD|CREDENTIALS?)$", re.IGNORECASE)


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of the runner's environment every node gets."""
    return {k: v for k, v in environ.items()
            if k in INHERITED_ENV or (k.startswith(INHERITED_ENV_PREFIXES) and not _CREDENTIAL.search(k))}


class Containers:
    """Prepares each attempt of a container node; one per run."""

    def __init__(self, binder: Binder, volume_sources: dict[str, dict], volume_given: dict[str, Path]) -> None:
        self.binder = binder
        self.volume_sources = volume_sources  # workflow volumes by name (claims count as persistentVolumeClaim)
        self.volume_given = volume_given  # volume name -> the folder the caller maps it to
        self.endpoints: Path | None = None  # the local cluster's Service-name table (localcluster.py)

    def prepare(self, node: Node) -> tuple[list[str], list[str], dict[str, str], str | None]:
        """argv to run, argv to show (before $(VAR) expansion: no secrets), env and cwd of an attempt.

        Also sets the node's output paths, deadline and readiness-probe schedule for this attempt.
        """
        tmpl, tp = node.tmpl, node.tpath
        base = self.binder.container_lookup(node, {})
        if tmpl.get("podSpecPatch") not in (None, ""):
            check_pod_spec_patch(subst(tmpl["podSpecPatch"], base, f"{tp}.podSpecPatch"), f"{tp}.podSpecPatch")
        mapping, paths = self._map_paths(node, base)
        lookup = self.binder.container_lookup(node, paths)
        container = subst(tmpl["container"], lookup, f"{tp}.container")
        ordered = sorted(mapping, key=lambda m: -len(m[0]))

        def rewrite(s: str) -> str:
            kv = KEY_VALUE.match(s)  # a `key=/path` argument (a step's override) holds a path too
            if kv:
                return kv[1] + rewrite(kv[2])
            for c, local in ordered:
                c = c.rstrip("/") or "/"
                if s == c:
                    return str(local)
                if c != "/" and s.startswith(c + "/"):
                    return str(local) + s[len(c):]
            return s

        shown = [rewrite(as_str(x)) for x in (container.get("command") or []) + (container.get("args") or [])]
        if shown and shown[0] in ("python", "python3"):
            shown[0] = sys.executable
        env, defined = inherited_env(os.environ), {}
        for e in container.get("env") or []:
            if "valueFrom" in e:
                if e["name"] in os.environ:  # the secret's local stand-in is the same-named variable
                    defined[e["name"]] = env[e["name"]] = os.environ[e["name"]]
                else:
                    env.pop(e["name"], None)
            else:
                defined[e["name"]] = env[e["name"]] = k8s_expand(rewrite(as_str(e.get("value", ""))), defined)
        argv = [k8s_expand(a, defined) for a in shown]  # Kubernetes expands $(VAR) in command/args
        env["ARGO_PROGRESS_FILE"] = str(node.dir / "progress")
        env["KUBELLM_LOCAL_RUN"] = "1"
        if self.endpoints is not None:
            env["KUBELLM_LOCAL_ENDPOINTS"] = str(self.endpoints)
        env.setdefault("PYTHONUNBUFFERED", "1")
        cwd = None
        if container.get("workingDir"):
            wd = rewrite(container["workingDir"])
            if not Path(wd).is_dir():
                raise TaskError(f"{tp}.container.workingDir: {container['workingDir']} is neither a mounted volume "
                                "nor a folder on this machine")
            cwd = wd
        self.schedule(node, container, lookup)
        return argv, shown, env, cwd

    def _map_paths(self, node: Node, base: Callable[[str], str]) -> tuple[list[tuple[str, Path]], dict[str, str]]:
        """(container path, local path) pairs of mounts and artifacts, and the {{...path}} variables."""
        tmpl, tp = node.tmpl, node.tpath
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
            m = subst(m, base, f"{tp}.container.volumeMounts[{j}]")
            local = self.volume_dir(m["name"], node, template_volumes, f"{tp}.container.volumeMounts[{j}].name")
            local = local / m["subPath"] if m.get("subPath") else local
            local.mkdir(parents=True, exist_ok=True)
            mapping.append((m["mountPath"], local))
        paths: dict[str, str] = {}
        for j, a in enumerate((tmpl.get("inputs") or {}).get("artifacts") or []):
            cpath = subst(a["path"], base, f"{tp}.inputs.artifacts[{j}].path")
            local = node.in_arts.get(a["name"]) or node.dir / "inputs" / a["name"]  # absent optional: never created
            mapping.append((cpath, local))
            paths[f"inputs.artifacts.{a['name']}.path"] = str(local)
        outs = tmpl.get("outputs") or {}
        node.art_paths, node.param_paths = {}, {}
        for kind, folder, store in (("artifacts", "artifacts", node.art_paths), ("parameters", "params", node.param_paths)):
            added = []
            for j, o in enumerate(outs.get(kind) or []):
                cpath = subst(o["path"] if kind == "artifacts" else o["valueFrom"]["path"], base,
                              f"{tp}.outputs.{kind}[{j}]")
                key = (o.get("s3") or {}).get("key") if kind == "artifacts" else None
                if key not in (None, ""):
                    kpath = f"{tp}.outputs.artifacts[{j}].s3.key"
                    inside, local = None, self.binder.s3_path(subst(str(key), base, kpath), kpath)
                    local.parent.mkdir(parents=True, exist_ok=True)
                    self.binder.fresh.add(local)  # written anew: readers of it (or of a prefix of it) re-run too
                else:
                    inside = through(cpath)
                    local = inside or node.dir / folder / o["name"]
                store[o["name"]] = (cpath, local)
                paths[f"outputs.{kind}.{o['name']}.path"] = str(local)
                if inside is None:
                    added.append((cpath, local))
            mapping.extend(added)
        return mapping, paths

    @staticmethod
    def schedule(node: Node, container: dict, lookup: Callable[[str], str]) -> None:
        """The attempt's deadline and, for a daemon, when to probe it and when to give up."""
        tmpl, tp = node.tmpl, node.tpath
        deadlines = []
        for key in ("activeDeadlineSeconds", "timeout"):
            if tmpl.get(key) not in (None, ""):
                deadlines.append(seconds(subst(tmpl[key], lookup, f"{tp}.{key}"), f"{tp}.{key}"))
        node.deadline = node.t_attempt + min(deadlines) if deadlines else None
        if node.daemon:
            node.ready, node.probe_fails = False, 0
            node.probe = container.get("readinessProbe")
            delay = float((node.probe or {}).get("initialDelaySeconds") or 0)
            node.probe_next = node.t_attempt + delay
            node.ready_by = node.t_attempt + (min(deadlines) if deadlines else DAEMON_READY_CAP_S)

    def volume_dir(self, name: str, node: Node, template_volumes: dict, where: str) -> Path:
        source = template_volumes.get(name) or self.volume_sources.get(name)
        if source is None:
            raise TaskError(f"{where}: no volume named '{name}' (volumes are {', '.join(self.volume_sources) or 'none'})")
        if name in self.volume_given:
            return self.volume_given[name]
        if "emptyDir" in source:
            return node.dir / "volumes" / name  # an emptyDir lives as long as its pod
        return self.binder.out / "volumes" / name
