"""The Kubernetes API reference carried by the `kubernetes` Python client, read as text.

The client (28.1.0 is Kubernetes v1.28) is never imported: it pins urllib3<2, so it is installed
with `pip install --no-deps kubernetes==28.1.0`, or a wheel file or unpacked copy is named. Its
generated model classes are parsed with `ast` into classes and fields with their descriptions,
API groups and topics. `steps.harvest` turns them into knowledge-base documents; other steps can
read the same facts (a field's type, its JSON name, the kind it belongs to).
"""

from __future__ import annotations

import ast
import fnmatch
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from steps._io import Progress

# Topics, in matching order. A class (and so each of its field documents) gets exactly one topic:
#   1. the topic whose `groups` holds the class's API group (batch -> jobs-cronjobs), else
#   2. the first topic whose `kinds` patterns (fnmatch, on the class name without its version
#      prefix, e.g. "DeploymentSpec") match, else
#   3. the same two rules applied to the top-level kind the class hangs under
#      (RollingUpdateDeployment -> Deployment -> deployments-replicasets), else "other".
# The order matters for rule 2: api-machinery and security come before broad prefixes such as
# "Pod*" and "Service*", so PodSecurityContext and ServiceAccount land where a reader would look.
# Folder documents take the `topic:` of their front matter, else their top folder's name if it
# is a topic, else "other".
TOPICS: dict[str, dict[str, Any]] = {
    "api-machinery": {
        "description": "Object metadata, label selectors, owner references, status and list "
        "envelopes, API discovery, admission webhooks and policies, CRDs, API priority and fairness.",
        "kinds": ["ObjectMeta", "ListMeta", "LabelSelector*", "OwnerReference", "ManagedFieldsEntry",
                  "Status", "StatusDetails", "StatusCause", "DeleteOptions", "Preconditions", "Condition",
                  "ObjectReference", "LocalObjectReference", "WatchEvent", "APIResource*", "APIGroup*",
                  "APIVersions", "GroupVersionForDiscovery", "ServerAddressByClientCIDR", "APIService*",
                  "CustomResource*", "VersionInfo"],
        "groups": ["meta", "admissionregistration.k8s.io", "apiextensions.k8s.io",
                   "apiregistration.k8s.io", "flowcontrol.apiserver.k8s.io", "internal.apiserver.k8s.io"],
    },
    "security-policies": {
        "description": "Pod and container security contexts, Linux capabilities, seccomp, AppArmor, "
        "SELinux, sysctls, network policies and certificates.",
        "kinds": ["SecurityContext", "PodSecurityContext", "Capabilities", "SeccompProfile", "SELinuxOptions",
                  "AppArmor*", "WindowsSecurityContextOptions", "Sysctl", "NetworkPolicy*", "IPBlock"],
        "groups": ["certificates.k8s.io"],
    },
    "namespaces-rbac": {
        "description": "Namespaces, service accounts and tokens, RBAC roles and bindings, "
        "authentication and authorization reviews.",
        "kinds": ["Namespace*", "ServiceAccount*", "Role*", "ClusterRole*", "PolicyRule", "AggregationRule",
                  "Subject", "TokenRequest*", "TokenReview*", "BoundObjectReference", "UserInfo",
                  "*SubjectAccessReview*", "SelfSubject*", "SubjectRulesReviewStatus", "ResourceRule",
                  "NonResourceRule", "ResourceAttributes", "NonResourceAttributes"],
        "groups": ["rbac.authorization.k8s.io", "authentication.k8s.io", "authorization.k8s.io"],
    },
    "autoscaling": {
        "description": "HorizontalPodAutoscaler (v1 and v2), scaling behavior and policies, metric "
        "sources and targets, the Scale subresource.",
        "kinds": ["HorizontalPodAutoscaler*", "HPAScaling*", "Metric*", "*MetricSource", "*MetricStatus",
                  "CrossVersionObjectReference", "Scale", "ScaleSpec", "ScaleStatus"],
        "groups": ["autoscaling"],
    },
    "resource-management": {
        "description": "Container resource requests and limits, resource quotas, limit ranges, "
        "priority classes, resize policies and dynamic resource allocation.",
        "kinds": ["ResourceRequirements", "ResourceQuota*", "LimitRange*", "PriorityClass*", "ScopeSelector",
                  "ScopedResourceSelectorRequirement", "ContainerResizePolicy", "ResourceClaim*",
                  "PodResourceClaim*", "ResourceClass*", "Overhead"],
        "groups": ["resource.k8s.io"],
    },
    "scheduling": {
        "description": "Node and pod affinity, node selectors, taints and tolerations, topology "
        "spread, scheduling gates, disruption budgets and eviction.",
        "kinds": ["Affinity", "NodeAffinity", "PodAffinity*", "PodAntiAffinity", "WeightedPodAffinityTerm",
                  "PreferredSchedulingTerm", "NodeSelector*", "Toleration", "Taint", "TopologySpreadConstraint",
                  "TopologySelector*", "PodSchedulingGate", "PodSchedulingContext*", "PodDisruptionBudget*",
                  "Eviction", "Binding"],
        "groups": [],
    },
    "ingress": {
        "description": "Ingress rules, paths, backends and TLS; IngressClass.",
        "kinds": ["Ingress*", "HTTPIngress*", "ServiceBackendPort"],
        "groups": [],
    },
    "services-networking": {
        "description": "Services, service ports and types, Endpoints and EndpointSlices, load "
        "balancer status, cluster CIDRs and IP addresses.",
        "kinds": ["Service*", "Endpoint*", "LoadBalancer*", "PortStatus", "SessionAffinityConfig",
                  "ClientIPConfig", "ForZone", "ClusterCIDR*", "IPAddress*", "ParentReference"],
        "groups": ["discovery.k8s.io"],
    },
    "configmaps-secrets": {
        "description": "ConfigMaps and Secrets and the ways pods consume them (env, volumes, projections).",
        "kinds": ["ConfigMap*", "Secret*"],
        "groups": [],
    },
    "storage-volumes": {
        "description": "Pod volumes and volume sources, mounts, PersistentVolumes and claims, "
        "StorageClasses, CSI drivers and nodes, volume attachments.",
        "kinds": ["Volume*", "*VolumeSource", "PersistentVolume*", "StorageClass*", "CSI*", "*Projection",
                  "KeyToPath", "DownwardAPIVolume*", "AttachedVolume"],
        "groups": ["storage.k8s.io"],
    },
    "jobs-cronjobs": {
        "description": "Jobs (completions, parallelism, backoff, pod failure policy) and CronJobs.",
        "kinds": ["Job*", "CronJob*", "PodFailurePolicy*", "UncountedTerminatedPods"],
        "groups": ["batch"],
    },
    "statefulsets-daemonsets": {
        "description": "StatefulSets (ordinals, volume claim templates, update strategy) and DaemonSets.",
        "kinds": ["StatefulSet*", "DaemonSet*", "RollingUpdateStatefulSetStrategy", "RollingUpdateDaemonSet"],
        "groups": [],
    },
    "deployments-replicasets": {
        "description": "Deployments (strategy, rollout, revision history), ReplicaSets, "
        "ReplicationControllers and ControllerRevisions.",
        "kinds": ["Deployment*", "ReplicaSet*", "ReplicationController*", "RollingUpdateDeployment",
                  "ControllerRevision*"],
        "groups": [],
    },
    "nodes-cluster": {
        "description": "Nodes (spec, status, conditions, addresses, images), events, leases, "
        "runtime classes and component status.",
        "kinds": ["Node*", "Event*", "Lease*", "RuntimeClass*", "Scheduling", "ComponentStatus*",
                  "ComponentCondition", "ContainerImage", "DaemonEndpoint"],
        "groups": ["coordination.k8s.io", "node.k8s.io", "events.k8s.io"],
    },
    "pods-containers": {
        "description": "Pods and pod templates, containers, probes, lifecycle hooks, environment "
        "variables, ports, container and pod status.",
        "kinds": ["Pod*", "Container*", "EphemeralContainer*", "Probe", "Lifecycle*", "EnvVar*",
                  "EnvFromSource", "ExecAction", "HTTPGetAction", "HTTPHeader", "TCPSocketAction",
                  "GRPCAction", "SleepAction", "HostAlias", "ObjectFieldSelector", "ResourceFieldSelector"],
        "groups": [],
    },
    "other": {
        "description": "Everything no other topic claims.",
        "kinds": [],
        "groups": [],
    },
}

# The client names a class after its version only (V1Scale, V1Eviction), and the API paths alone do
# not settle a few of them (Scale is served under apps and core; ObjectMeta appears everywhere).
# These are the kinds whose group is fixed by hand; every other group is read from the client's
# API paths or inherited from the top-level kinds that use the class.
KIND_GROUPS = {
    **dict.fromkeys(
        ["ObjectMeta", "ListMeta", "LabelSelector", "LabelSelectorRequirement", "OwnerReference",
         "ManagedFieldsEntry", "Status", "StatusDetails", "StatusCause", "DeleteOptions", "Preconditions",
         "Condition", "WatchEvent", "APIResource", "APIResourceList", "APIGroup", "APIGroupList",
         "APIVersions", "GroupVersionForDiscovery", "ServerAddressByClientCIDR", "VersionInfo"],
        "meta",
    ),
    "Scale": "autoscaling",
    "ScaleSpec": "autoscaling",
    "ScaleStatus": "autoscaling",
    "Eviction": "policy",
    "Binding": "core",
    # core/v1 types that only storage.k8s.io's StorageClass uses
    "TopologySelectorTerm": "core",
    "TopologySelectorLabelRequirement": "core",
}


_VERSION_RE = re.compile(r"^v\d+(?:(?:alpha|beta)\d+)?$")
_BOILERPLATE = [
    re.compile(r"^(?:Gets|Sets) the \w+ of this \w+\.$"),
    re.compile(r"^:(?:return|rtype|param|type)\b"),
    re.compile(r"^NOTE: This class is auto generated"),
    re.compile(r"^Ref: https://openapi-generator\.tech"),
    re.compile(r"^Do not edit the class manually\.$"),
]
_CALL_API_RE = re.compile(
    r"call_api\(\s*'(?P<path>[^']+)',\s*'[A-Z]+',.*?response_type=(?:'(?P<type>\w+)'|None)", re.S
)
_API_PATH_RE = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/")
_RELEASE_RE = re.compile(r"The version of the OpenAPI document: release-(\d+\.\d+)")



@dataclass
class K8sFiles:
    """The client's generated sources as text, keyed by path inside the package (client/models/v1_pod.py)."""

    files: dict[str, str]
    version: str | None
    origin: str
    how: str  # installed | wheel | folder

    @property
    def release(self) -> str | None:
        for name, text in self.files.items():
            if name.startswith("client/models/"):
                m = _RELEASE_RE.search(text[:1000])
                if m:
                    return m.group(1)
        return None


def _wanted(name: str) -> bool:
    return (name.startswith(("client/models/", "client/api/")) and name.endswith(".py")
            and not name.endswith("__init__.py") and name.count("/") == 2)


def load_k8s_files(source: Path | None = None) -> K8sFiles:
    """Read the kubernetes client's model and API sources from a wheel, a folder or the installed package."""
    if source is None:
        import importlib.util
        from importlib import metadata

        # find_spec of the top-level package locates it without executing its __init__
        spec = importlib.util.find_spec("kubernetes")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "the kubernetes package is not installed; run `pip install --no-deps kubernetes==28.1.0` "
                "or set k8s_source to a kubernetes wheel (.whl) or unpacked folder"
            )
        pkg = Path(list(spec.submodule_search_locations)[0])
        try:
            version = metadata.version("kubernetes")
        except metadata.PackageNotFoundError:
            version = None
        return _read_folder(pkg, version, "installed")

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"k8s_source {source} does not exist; point it at a kubernetes wheel or folder")
    if source.is_file():
        return _read_wheel(source)
    for pkg in (source / "kubernetes", source):
        if (pkg / "client" / "models").is_dir():
            return _read_folder(pkg, None, "folder")
    raise FileNotFoundError(
        f"k8s_source {source} holds no kubernetes/client/models folder; point it at an unpacked "
        "kubernetes wheel, a site-packages folder, or the kubernetes package folder itself"
    )


def _read_folder(pkg: Path, version: str | None, how: str) -> K8sFiles:
    files = {}
    for sub in ("models", "api"):
        for p in sorted((pkg / "client" / sub).glob("*.py")):
            name = f"client/{sub}/{p.name}"
            if _wanted(name):
                files[name] = read_utf8(p)
    if not any(n.startswith("client/models/") for n in files):
        raise FileNotFoundError(f"{pkg / 'client' / 'models'} holds no generated model files")
    if version is None:
        version = _version_near(pkg)
    return K8sFiles(files, version, str(pkg.resolve()), how)


def _version_near(pkg: Path) -> str | None:
    for meta in sorted(pkg.parent.glob("kubernetes-*.dist-info/METADATA")):
        m = re.search(r"^Version: (\S+)", meta.read_text(encoding="utf-8"), re.M)
        if m:
            return m.group(1)
    init = pkg / "__init__.py"
    if init.is_file():
        m = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", init.read_text(encoding="utf-8"), re.M)
        if m:
            return m.group(1)
    return None


def _read_wheel(path: Path) -> K8sFiles:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"k8s_source {path} is neither a folder nor a wheel (.whl zip) file") from e
    with zf:
        files, version = {}, None
        for name in sorted(zf.namelist()):
            if name.startswith("kubernetes/") and _wanted(name[len("kubernetes/"):]):
                try:
                    files[name[len("kubernetes/"):]] = zf.read(name).decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{path}: member {name} is not UTF-8 text; is the wheel damaged?") from e
            elif re.fullmatch(r"kubernetes-[^/]+\.dist-info/METADATA", name):
                m = re.search(r"^Version: (\S+)", zf.read(name).decode("utf-8"), re.M)
                version = m.group(1) if m else None
    if not any(n.startswith("client/models/") for n in files):
        raise ValueError(f"k8s_source {path} holds no kubernetes/client/models/*.py; is it a kubernetes wheel?")
    return K8sFiles(files, version, str(path.resolve()), "wheel")


@dataclass
class ApiField:
    attr: str  # python name (replicas, min_ready_seconds)
    json: str  # JSON name (replicas, minReadySeconds)
    type: str  # openapi type as generated (list[V1Container])
    description: str


@dataclass
class ApiClass:
    name: str  # generated class name (V1DeploymentSpec, CoreV1Event)
    bare: str  # without prefix and version (DeploymentSpec, Event)
    version: str  # v1, v1beta3, v2; "" for the unversioned VersionInfo
    file: str  # kubernetes/client/models/v1_deployment_spec.py
    module_group: str | None  # api-file prefix in the file name (core, events, discovery ...)
    doc: str
    fields: list[ApiField]
    group: str = ""
    paths: list[str] = field(default_factory=list)  # shortest kind paths (Deployment.spec)
    topic: str = "other"

    def is_root(self) -> bool:
        names = {f.attr for f in self.fields}
        return {"api_version", "kind", "metadata"} <= names and not self.bare.endswith("List")

    def refs(self, classes: dict[str, "ApiClass"]) -> Iterable[tuple[ApiField, "ApiClass"]]:
        for f in self.fields:
            for ident in re.findall(r"\w+", f.type):
                if ident in classes:
                    yield f, classes[ident]


def clean_docstring(doc: str | None) -> str:
    """Drop the generator's boilerplate lines and `# noqa` markers; keep the description."""
    lines = []
    for line in (doc or "").splitlines():
        line = line.replace("# noqa: E501", "").strip()
        if line and not any(p.match(line) for p in _BOILERPLATE):
            lines.append(line)
    return "\n".join(lines)


def parse_model_file(relpath: str, text: str) -> list[ApiClass]:
    """The classes of one generated model file: names, versions, fields with JSON names, types and text."""
    stem = relpath.rsplit("/", 1)[-1][:-3]
    parts = stem.split("_")
    if _VERSION_RE.match(parts[0]):
        prefix, version = "", parts[0]
    elif len(parts) > 1 and _VERSION_RE.match(parts[1]):
        prefix, version = parts[0], parts[1]
    else:
        prefix, version = "", ""
    try:
        tree = ast.parse(text, filename=relpath)
    except SyntaxError as e:
        raise ValueError(f"{relpath}: cannot parse the generated model ({e.msg}, line {e.lineno})") from e
    out = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        tables: dict[str, dict] = {}
        docs: dict[str, str] = {}
        for stmt in node.body:
            if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                    and stmt.targets[0].id in ("openapi_types", "attribute_map")):
                tables[stmt.targets[0].id] = ast.literal_eval(stmt.value)
            elif isinstance(stmt, ast.FunctionDef) and any(
                isinstance(d, ast.Name) and d.id == "property" for d in stmt.decorator_list
            ):
                docs[stmt.name] = clean_docstring(ast.get_docstring(stmt))
        types, names = tables.get("openapi_types", {}), tables.get("attribute_map", {})
        lead = prefix + version
        bare = node.name[len(lead):] if node.name.lower().startswith(lead) else node.name
        fields = [ApiField(a, names.get(a, a), t, docs.get(a, "")) for a, t in types.items()]
        out.append(ApiClass(node.name, bare, version, f"kubernetes/{relpath}", prefix or None,
                            clean_docstring(ast.get_docstring(node)), fields))
    return out


def api_groups(files: dict[str, str]) -> tuple[dict[str, set[str]], dict[str, str]]:
    """From the client's API modules: class name -> groups whose resource paths return it, and
    api-module prefix (core, events, storage ...) -> group name (core, events.k8s.io ...)."""
    by_class: dict[str, set[str]] = {}
    by_prefix: dict[str, str] = {}
    for name, text in files.items():
        if not name.startswith("client/api/"):
            continue
        stem = name.rsplit("/", 1)[-1][: -len("_api.py")]
        head, _, version = stem.rpartition("_")
        for m in _CALL_API_RE.finditer(text):
            pm = _API_PATH_RE.match(m["path"])
            if not pm:
                continue
            group = pm["group"] or "core"
            if head and _VERSION_RE.match(version):
                by_prefix.setdefault(head, group)
            # subresources (.../{name}/scale, /eviction, /status) return shared types: skip them
            if m["type"] and "{name}/" not in m["path"]:
                by_class.setdefault(m["type"], set()).add(group)
    return by_class, by_prefix


def _shortest_paths(classes: dict[str, ApiClass], roots: list[ApiClass]) -> dict[str, tuple[int, list[str]]]:
    """For every class reachable from a top-level kind: (depth, all shortest kind paths), e.g.
    V1PodSpec -> (1, ["Pod.spec"]); V1Container -> (2, ["Pod.spec.containers", "Pod.spec.initContainers"])."""
    best: dict[str, tuple[int, list[str]]] = {}
    cap = 200  # ObjectMeta alone sits under every kind; keep the lists bounded
    for root in roots:
        frontier = {root.name: [root.bare]}
        seen = {root.name}
        depth = 0
        while frontier:
            for name, paths in frontier.items():
                d, known = best.get(name, (depth + 1, []))
                if depth < d:
                    best[name] = (depth, sorted(paths)[:cap])
                elif depth == d and len(known) < cap:
                    best[name] = (d, sorted(set(known) | set(paths))[:cap])
            nxt: dict[str, list[str]] = {}
            for name, paths in frontier.items():
                for f, child in classes[name].refs(classes):
                    if child.name not in seen:
                        nxt.setdefault(child.name, []).extend(f"{p}.{f.json}" for p in paths[:cap])
            seen.update(nxt)
            frontier = nxt
            depth += 1
    return best


def topic_of(bare: str, group: str | None = None) -> str | None:
    """The topic that claims this class by its API group, else the first topic (in TOPICS order)
    with a matching kind pattern, else None."""
    for name, spec in TOPICS.items():
        if group and group in spec["groups"]:
            return name
    for name, spec in TOPICS.items():
        if any(fnmatch.fnmatchcase(bare, pat) for pat in spec["kinds"]):
            return name
    return None


def analyse_classes(src: K8sFiles) -> tuple[dict[str, ApiClass], dict[str, list[ApiClass]], dict[str, int]]:
    """Parse every model, then give each class its API group, kind paths and topic."""
    model_files = sorted(n for n in src.files if n.startswith("client/models/"))
    progress = Progress(len(model_files), "harvest k8s-api")
    classes: dict[str, ApiClass] = {}
    for name in model_files:
        for c in parse_model_file(name, src.files[name]):
            classes[c.name] = c
        progress.advance()
    by_class, by_prefix = api_groups(src.files)
    roots = sorted((c for c in classes.values() if c.is_root()), key=lambda c: c.name)
    paths = _shortest_paths(classes, roots)

    # which groups' top-level kinds reach each class (any depth)
    reached: dict[str, set[str]] = {}
    for root in roots:
        root_groups = by_class.get(root.name, set())
        stack, seen = [root], {root.name}
        while stack:
            c = stack.pop()
            reached.setdefault(c.name, set()).update(root_groups)
            for _, child in c.refs(classes):
                if child.name not in seen:
                    seen.add(child.name)
                    stack.append(child)

    unresolved = 0
    for c in classes.values():
        c.paths = paths.get(c.name, (0, []))[1]
        direct = by_class.get(c.name, set())
        via = reached.get(c.name, set())
        if c.module_group:
            c.group = by_prefix.get(c.module_group, c.module_group)
        elif c.bare in KIND_GROUPS:
            c.group = KIND_GROUPS[c.bare]
        elif len(direct) == 1:
            c.group = next(iter(direct))
        elif len(via) == 1:
            c.group = next(iter(via))
        elif "core" in via:
            # shared building blocks (PodTemplateSpec, ResourceRequirements) live in core/v1
            c.group = "core"
        elif via or direct:
            c.group = sorted(via or direct)[0]
    # Classes that no top-level kind reaches (TokenRequestSpec sits under a subresource,
    # NetworkPolicyStatus under nothing) take the group of a class that uses them, else of the
    # class whose name theirs extends (NetworkPolicyStatus -> NetworkPolicy).
    pending = [c for c in classes.values() if not c.group]
    while pending:
        for c in pending:
            users = sorted({p.group for p in classes.values() if p.group
                            for _, child in p.refs(classes) if child is c})
            if users:
                c.group = "core" if "core" in users else users[0]
        still = [c for c in pending if not c.group]
        if len(still) == len(pending):
            break
        pending = still
    for c in pending:
        stems = [o for o in classes.values() if o.group and o.version == c.version
                 and c.bare.startswith(o.bare) and o.bare != c.bare]
        c.group = max(stems, key=lambda o: len(o.bare)).group if stems else "unknown"
        unresolved += c.group == "unknown"

    roots_by_bare: dict[str, list[ApiClass]] = {}
    for r in roots:
        roots_by_bare.setdefault(r.bare, []).append(r)
    for c in classes.values():
        root = _root_of(c, roots_by_bare)
        c.topic = (topic_of(c.bare, c.group)
                   or (root and topic_of(root.bare, root.group))
                   or "other")
    stats = {
        "model_files": len(model_files),
        "classes": len(classes),
        "top_level_kinds": len(roots),
        "fields": sum(len(c.fields) for c in classes.values()),
        "fields_described": sum(1 for c in classes.values() for f in c.fields if f.description),
        "field_description_chars": sum(len(f.description) for c in classes.values() for f in c.fields),
        "classes_with_docstring_text": sum(1 for c in classes.values() if c.doc),
        "classes_group_unresolved": unresolved,
    }
    return classes, roots_by_bare, stats


def _root_of(c: ApiClass, roots: dict[str, list[ApiClass]]) -> ApiClass | None:
    """The top-level kind of the class's first shortest path (Container -> Pod), same version if possible."""
    if not c.paths:
        return None
    candidates = roots.get(c.paths[0].split(".", 1)[0], [])
    return next((r for r in candidates if r.version == c.version), candidates[0] if candidates else None)


def _api_version(group: str, version: str) -> str:
    if group == "core":
        return version or "v1"
    return f"{group}/{version}" if version else group


def _type_name(t: str, classes: dict[str, ApiClass]) -> str:
    return re.sub(r"\w+", lambda m: classes[m[0]].bare if m[0] in classes else m[0], t)


def k8s_documents(src: K8sFiles, kind_docs: bool = True) -> tuple[list[dict], dict[str, int]]:
    """One document per described field, and (kind_docs) one overview per class."""
    classes, roots_by_bare, stats = analyse_classes(src)
    source = f"k8s-api-v{src.release}" if src.release else f"k8s-api-client-{src.version}"
    usages: dict[str, list[tuple[ApiClass, ApiField]]] = {}
    for c in classes.values():
        for f, child in c.refs(classes):
            if not (c.bare.endswith("List") and f.json == "items") and f.description:
                usages.setdefault(child.name, []).append((c, f))

    docs = []
    for c in sorted(classes.values(), key=lambda c: c.name):
        version = c.version or "unversioned"
        unique = len(c.paths) == 1
        root = _root_of(c, roots_by_bare)
        roots = {p.split(".", 1)[0] for p in c.paths}
        common = dict(source=source, topic=c.topic, api_group=c.group, version=c.version or None,
                      kind=root.bare if root and len(roots) == 1 else None, **{"class": c.bare})
        for f in c.fields:
            if not f.description:
                continue
            docs.append(dict(
                id=f"k8s/{c.group}/{version}/{c.bare}/{f.json}", doc_type="field", **common, field=f.json,
                type=_type_name(f.type, classes),
                title=f"{c.paths[0] if unique else c.bare}.{f.json}",
                paths=[f"{p}.{f.json}" for p in c.paths[:5]],
                text=f.description, file=c.file,
            ))
        if kind_docs and c.fields:
            docs.append(dict(
                id=f"k8s/{c.group}/{version}/{c.bare}", doc_type="kind", **common, field=None, type="object",
                title=c.bare if (c.is_root() or not unique) else f"{c.paths[0]} ({c.bare})",
                paths=c.paths[:5], text=_kind_text(c, classes, usages.get(c.name, [])), file=c.file,
            ))
    return docs, {**stats, "source": source}


def _kind_text(c: ApiClass, classes: dict[str, ApiClass], usages: list[tuple[ApiClass, ApiField]]) -> str:
    # The generated classes carry no description of their own (only generator boilerplate), and
    # fields typed by a single class (spec, livenessProbe) lose theirs too, so the overview is
    # assembled from the class's structure and the descriptions of list/map fields that use it.
    gv = f"{c.group}/{c.version}" if c.version else c.group
    lines = [c.doc] if c.doc else []
    if c.is_root():
        lines.append(f"{c.bare} is a top-level Kubernetes API resource "
                     f"(apiVersion: {_api_version(c.group, c.version)}, kind: {c.bare}).")
    elif c.bare.endswith("List") and any(f.json == "items" for f in c.fields):
        item = next(f for f in c.fields if f.json == "items")
        lines.append(f"{c.bare} ({gv}) is the list returned when listing {_type_name(item.type, classes)} objects.")
    else:
        lines.append(f"{c.bare} is an object type in {gv}.")
        if c.paths:
            more = f" and {len(c.paths) - 3} more places" if len(c.paths) > 3 else ""
            lines.append(f"It is used at {', '.join(c.paths[:3])}{more}.")
    seen: set[str] = set()
    for owner, f in sorted(usages, key=lambda u: (u[0].name, u[1].json)):
        if f.description not in seen and len(seen) < 3:
            seen.add(f.description)
            lines.append(f"As {owner.bare}.{f.json}: {f.description}")
    lines.append("Fields: " + "; ".join(f"{f.json} ({_type_name(f.type, classes)})" for f in c.fields) + ".")
    return "\n".join(lines)


def read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            "re-save it as UTF-8 or move it out of the folder"
        ) from e
