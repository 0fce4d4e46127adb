"""Multi-node fine-tuning as a Kubeflow Trainer TrainJob, created and watched by an Argo resource template.

    manifest = trainjob_manifest(name="{{workflow.name}}-finetune-", image=wp("steps-image"),
                                 module="steps.finetune", args=[...], nodes=2, nproc=1, cpu="8", mem="32Gi",
                                 gpus="1", claim="kubellm-data", mount_path=DATA_MOUNT, env=[],
                                 labels={"kueue.x-k8s.io/queue-name": "kubellm"})
    finetune = trainjob_step("finetune", manifest, [Parameter(name="model")])

The runtime (ClusterTrainingRuntime `torch-distributed`, kubeflow/trainer
manifests/base/runtimes/torch_distributed.yaml) has one replicated job `node` whose container `node` has
an image and no command. Its torch plugin (pkg/runtime/framework/plugins/torch/torch.go, EnforceMLPolicy)
gives every node PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (the Job completion index),
PET_MASTER_ADDR (`<trainjob>-node-0-0.<trainjob>`) and PET_MASTER_PORT. Those are the environment
defaults of `torchrun`'s own options (torch/distributed/argparse_util.py: env var `PET_<OPTION>`),
and "TrainJobs using this policy are launched via the torchrun CLI" (docs/operator-guides/ml-policy.md).
So the trainer's command is `torchrun -m <module>`: torchrun starts numProcPerNode ranks per node with
RANK, LOCAL_RANK and WORLD_SIZE set, and steps.finetune, seeing RANK, trains as that one rank. A plain
`python <script>` reads no PET_* variable and every node would train alone. `python -m steps.finetune`
would work too (it re-launches itself under torchrun when it sees PET_NNODES), but with its own
`--nproc` as the ranks per node, overriding the TrainJob's numProcPerNode; torchrun as the command
keeps numProcPerNode the one number that counts, for any module.

The step's data reaches the pods only through a PersistentVolumeClaim (`claim`): an Argo resource
template passes no artifacts into the pods of the object it creates, so a TrainJob needs the pvc store.

Conditions: Argo parses successCondition/failureCondition with the Kubernetes label-selector parser and
reads each key as a plain gjson path (workflow/executor/resource.go, WaitResource and matchConditions);
a gjson query such as `status.conditions.#(type=="Complete").status` is not a valid label key, so a
condition cannot search the conditions list by type. What Trainer writes (pkg/controller/
trainjob_controller.go, pkg/runtime/framework/plugins/jobset/jobset.go Status): conditions of type
`Suspended` (set first, when Kueue or a user suspends the job), `Complete` and `Failed` (each only ever
with status True, appended by meta.SetStatusCondition), and `jobsStatus`, one entry per replicated job
of the runtime (for torch-distributed just `node`) with counts of its child Jobs.
  - Failure: Argo fails the node when ANY failure requirement holds, so FAILURE_CONDITION tests every
    position a `Failed` condition can take (at most three condition types exist).
  - Success: Argo needs ALL success requirements, so "Complete at position 0 or 1" cannot be said
    (with Kueue, Suspended comes first). SUCCESS_CONDITION reads the trainer job's own entry instead:
    `node` has succeeded, which is what makes the JobSet, and so the TrainJob, Complete. It is made
    for runtimes whose first replicated job is `node` (torch-distributed): with an initializer first it
    never holds, and only the template's deadline or the TrainJob's Failed condition ends the wait.

`kubellm lint` validates every TrainJob manifest of a workflow with validate_trainjob; the local runner
runs a TrainJob as one process per node (workflows/runner/localcluster.py).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable

import yaml
from hera.workflows import Parameter, Resource

from workflows.common import GPU_TOLERATIONS, MODELS_MOUNT, POD_SECURITY, SECURITY

API_VERSION = "trainer.kubeflow.org/v1alpha1"
GROUP = "trainer.kubeflow.org"
KIND = "TrainJob"
RUNTIME = "torch-distributed"
# the replicated job and container of the torch-distributed runtime that run the trainer
NODE = "node"
# the patch entries of spec.runtimePatches are keyed by their manager
PATCH_MANAGER = "kubellm.dev/workflow"
# the torch plugin sets these itself and its webhook refuses them in spec.trainer.env (TorchRunReservedEnvNames)
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")

SUCCESS_CONDITION = f"status.jobsStatus.0.name == {NODE}, status.jobsStatus.0.succeeded > 0"
FAILURE_CONDITION = ", ".join(f"status.conditions.{i}.type == Failed" for i in range(3))

_PLACEHOLDER = re.compile(r"\{\{.*?\}\}")
_RFC1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?")


def _dump(model: Any) -> dict:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def _env_dict(e: Any) -> dict:
    """An EnvVar as a dict; hera's Env (common.model_env()) is accepted too."""
    if isinstance(e, dict):
        return dict(e)
    if hasattr(e, "build"):
        return _dump(e.build())
    raise TypeError(f"env entries are dicts (name, value) or hera Env objects, not {type(e).__name__}")


def _count(value: int | str, what: str, allow_auto: bool) -> int | None:
    """A node or process count fixed at compile time (None: "auto")."""
    if isinstance(value, str):
        if allow_auto and value == "auto":
            return None
        if _PLACEHOLDER.search(value):
            raise ValueError(f"{what} is {value!r}: the TrainJob field is an integer and Argo substitutes "
                             "placeholders as text, so the API server would receive a string; fix it at compile "
                             "time (kubellm compile -p ...)")
        if not value.strip().isdigit():
            raise ValueError(f"{what} must be a whole number{' or auto' if allow_auto else ''}, got {value!r}")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a whole number of at least 1, got {value!r}")
    return value


def as_overrides(args: list[str]) -> list[str]:
    """A step's `--flag value` pairs as its `flag=value` overrides (steps._cli takes both). torchrun
    reads every `--option` on its command line, even after the module, as one of its own where the
    name is a prefix of one (`--r` for LoRA's rank is ambiguous among --rdzv-*, --role, ...; `--nproc`
    would be taken as --nproc-per-node), so a step started by torchrun gets positional overrides."""
    if len(args) % 2 or not all(a.startswith("--") for a in args[::2]):
        raise ValueError(f"expected --flag value pairs, got {args}")
    return [f"{flag[2:].replace('-', '_')}={value}" for flag, value in zip(args[::2], args[1::2])]


def trainjob_manifest(*, name: str, image: str, module: str, args: list[str], nodes: int, nproc: int | str,
                      cpu: str, mem: str, gpus: str | None, claim: str | None, mount_path: str | None,
                      env: list[dict], labels: dict[str, str], runtime: str = RUNTIME,
                      models_claim: str | None = None, deadline: int | None = 12 * 3600) -> dict:
    """A TrainJob running `torchrun -m <module> <args>` on `nodes` nodes with `nproc` ranks each.

    `name` becomes metadata.name, e.g. `{{workflow.name}}-finetune`; a name ending in "-" becomes
    metadata.generateName instead (`kubectl create` appends 5 characters), which keeps `argo retry`
    working: a retried node creates a new TrainJob where a fixed name would fail as AlreadyExists.
    `nproc` "auto" leaves numProcPerNode to the runtime (GPUs per node, else the CPU count).
    `cpu`, `mem`, `gpus` are per node (requests = limits); `claim` is mounted at `mount_path` on every
    node, `models_claim` (the model cache) at MODELS_MOUNT. `labels` go on the TrainJob, where Kueue
    reads `kueue.x-k8s.io/queue-name` and `kueue.x-k8s.io/priority-class`. `deadline` is the TrainJob's
    activeDeadlineSeconds: counted from its start (not its time in the queue), then Failed.
    """
    n = _count(nodes, "nodes", False)
    per_node = _count(nproc, "nproc", True)
    if (claim is None) != (mount_path is None):
        raise ValueError("claim and mount_path go together: the claim is mounted at mount_path on every node")
    envs = [_env_dict(e) for e in env]
    if bad := sorted({e.get("name") for e in envs} & set(RESERVED_ENV)):
        raise ValueError(f"env sets {', '.join(bad)}: the torch runtime sets these on every node itself")

    quantities = {"cpu": cpu, "memory": mem} | ({"nvidia.com/gpu": gpus} if gpus else {})
    trainer: dict[str, Any] = {
        "image": image,
        "command": ["torchrun", "-m", module],
        "args": [str(a) for a in args],
        "numNodes": n,
    }
    if per_node is not None:
        trainer["numProcPerNode"] = per_node
    trainer["resourcesPerNode"] = {"requests": dict(quantities), "limits": dict(quantities)}

    volumes, mounts = [], []
    if claim is not None:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": "data", "mountPath": mount_path})
    if models_claim is not None:
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": models_claim}})
        mounts.append({"name": "models", "mountPath": MODELS_MOUNT})
        have = {e.get("name") for e in envs}
        envs += [e for e in ({"name": "KUBELLM_CACHE", "value": MODELS_MOUNT},
                             {"name": "HF_HOME", "value": f"{MODELS_MOUNT}/hf"}) if e["name"] not in have]
    if gpus:
        # a container's /dev/shm is 64Mi: NCCL and DataLoader workers need more between the ranks of a node
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    cores = cpu.strip() if isinstance(cpu, str) else str(cpu)
    if not gpus and per_node and per_node > 1 and cores.isdigit() and "OMP_NUM_THREADS" not in {e.get("name") for e in envs}:
        # torchrun pins every rank to one thread when it starts several: share the node's cores instead
        envs.append({"name": "OMP_NUM_THREADS", "value": str(max(1, int(cores) // per_node))})
    if envs:
        trainer["env"] = envs

    # env of the `node` container may only come from spec.trainer (the jobset plugin's webhook refuses it here)
    container: dict[str, Any] = {"name": NODE, "securityContext": _dump(SECURITY)}
    if mounts:
        container["volumeMounts"] = mounts
    pod: dict[str, Any] = {"securityContext": _dump(POD_SECURITY), "containers": [container]}
    if volumes:
        pod["volumes"] = volumes
    if gpus:
        pod["tolerations"] = [_dump(t) for t in GPU_TOLERATIONS]

    metadata: dict[str, Any] = {"generateName": name} if name.endswith("-") else {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": runtime},
        "trainer": trainer,
        "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [{"name": NODE, "template": {"spec": {"template": {"spec": pod}}}}]}}}}],
    }
    if deadline:
        spec["activeDeadlineSeconds"] = int(deadline)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


# ---------------------------------------------------------------------------------------------
# Validation

def is_trainjob(obj: Any) -> bool:
    """A manifest of kind TrainJob in the trainer.kubeflow.org group (any version)."""
    return (isinstance(obj, dict) and obj.get("kind") == KIND
            and str(obj.get("apiVersion") or "").split("/")[0] == GROUP)


def _loc(parts: Iterable) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _unwrap(annotation: Any) -> Any:
    """Optional[X] -> X (the generated models use Optional for every optional field)."""
    from typing import Union, get_args, get_origin

    if get_origin(annotation) is Union:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _prepare(value: Any, annotation: Any, loc: tuple, problems: list[str]) -> Any:
    """Walk the document along the models' field types and turn the scalars of oneOf wrappers
    (Quantity, IntOrString), which the generated models only build through from_json, into instances;
    a value that fits none of the wrapper's types, or a quantity Kubernetes would not parse, is a problem."""
    from typing import get_args, get_origin

    from pydantic import BaseModel

    annotation = _unwrap(annotation)
    origin = get_origin(annotation)
    if origin in (list, tuple) and isinstance(value, list):
        (item,) = get_args(annotation)[:1]
        return [_prepare(v, item, loc + (i,), problems) for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        item = get_args(annotation)[1]
        return {k: _prepare(v, item, loc + (k,), problems) for k, v in value.items()}
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return value
    if "actual_instance" in annotation.model_fields:
        if value is None or isinstance(value, annotation):
            return value
        kinds = " or ".join(sorted(getattr(annotation, "one_of_schemas", None) or ()))
        try:
            inst = annotation.from_json(json.dumps(value))
        except ValueError:
            problems.append(f"{_loc(loc)}: {value!r} is not a {kinds}")
            return annotation.model_construct(actual_instance=value)
        if (annotation.__name__.endswith("Quantity") and isinstance(value, str)
                and not _PLACEHOLDER.search(value) and not _QUANTITY.fullmatch(value)):
            problems.append(f"{_loc(loc)}: {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 12Gi)")
        return inst
    if not isinstance(value, dict):
        return value
    fields = {(f.alias or k): f for k, f in annotation.model_fields.items()}
    return {k: _prepare(v, fields[k].annotation, loc + (k,), problems) if k in fields else v
            for k, v in value.items()}


_TYPE_WORDS = {"int": "an integer", "bool": "true or false", "string": "a string", "float": "a number",
               "dict": "a mapping", "list": "a list", "model": "a mapping", "datetime": "a date-time"}


def _message(err: dict) -> str:
    where, kind, given = _loc(err["loc"]), err["type"], err.get("input")
    if kind == "extra_forbidden":
        return f"{where}: unknown field (not part of the TrainJob schema of kubeflow-trainer-api 2.3.0)"
    if kind == "missing":
        return f"{where}: required field missing"
    if isinstance(given, str) and _PLACEHOLDER.search(given):
        wanted = next((w for k, w in _TYPE_WORDS.items() if kind.startswith(k)), "a non-string value")
        return (f"{where}: holds the Argo placeholder {given!r}, but the field wants {wanted}; Argo substitutes "
                "placeholders as text, so the API server would receive a string: fix the value at compile time")
    return f"{where}: {err['msg']} (got {given!r})"


def validate_trainjob(obj: dict) -> list[str]:
    """Problems of a TrainJob manifest, each "<field path>: <what is wrong>"; [] when it is valid.

    The schema is the kubeflow-trainer-api 2.3.0 models with unknown fields forbidden (they are
    ignored by default, and the API server would prune them silently); Argo placeholders `{{...}}` are
    fine in string fields and reported in integer or boolean ones. On top: apiVersion and kind, a name,
    numNodes and numProcPerNode whole numbers of at least 1, and what the torch runtime's webhook
    refuses (PET_* in spec.trainer.env, env for the `node` container in runtimePatches).
    """
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
    from pydantic import ValidationError

    if not isinstance(obj, dict):
        return [f"the manifest must be a mapping, got {type(obj).__name__}"]
    problems: list[str] = []
    if obj.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: expected {API_VERSION}, got {obj.get('apiVersion')!r}")
    if obj.get("kind") != KIND:
        problems.append(f"kind: expected {KIND}, got {obj.get('kind')!r}")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name_key = "name" if meta.get("name") else "generateName"
    name = meta.get(name_key)
    if not name:
        problems.append("metadata.name: required (or metadata.generateName with `create`)")
    elif isinstance(name, str):
        literal = _PLACEHOLDER.sub("x", name).removesuffix("-") if name_key == "generateName" else _PLACEHOLDER.sub("x", name)
        if not _RFC1035.fullmatch(literal):
            problems.append(f"metadata.{name_key}: {name!r} is not an RFC 1035 label (lower-case letters, digits "
                            "and '-', starting with a letter), which TrainJob names must be")
        elif "{{" not in name and len(name) > (58 if name_key == "generateName" else 63):
            problems.append(f"metadata.{name_key}: {name!r} is longer than a TrainJob name may be (63 characters)")

    prep: list[str] = []
    doc = _prepare(obj, TrainerV1alpha1TrainJob, (), prep)
    problems += prep
    try:
        TrainerV1alpha1TrainJob.model_validate(doc, extra="forbid", by_alias=True, by_name=False)
    except ValidationError as e:
        problems += [_message(err) for err in e.errors()]

    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    if "spec" not in obj:
        problems.append("spec: required field missing")
    trainer = spec.get("trainer") if isinstance(spec.get("trainer"), dict) else {}
    for key in ("numNodes", "numProcPerNode"):
        v = trainer.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            problems.append(f"spec.trainer.{key}: must be at least 1, got {v}")
    for j, e in enumerate(trainer.get("env") or []):
        if isinstance(e, dict) and e.get("name") in RESERVED_ENV:
            problems.append(f"spec.trainer.env[{j}].name: {e['name']} is set by the torch runtime on every node "
                            "(the Trainer webhook refuses it here)")
    for p, patch in enumerate(spec.get("runtimePatches") or []):
        rjobs = ((((patch or {}).get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}).get(
            "replicatedJobs") or []
        for r, rjob in enumerate(rjobs):
            pod = ((((rjob or {}).get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            for c, container in enumerate(pod.get("containers") or []):
                if (container or {}).get("name") == NODE and container.get("env"):
                    problems.append(f"spec.runtimePatches[{p}].trainingRuntimeSpec.template.spec.replicatedJobs[{r}]"
                                    f".template.spec.template.spec.containers[{c}].env: the `node` container's env "
                                    "is set through spec.trainer.env (the Trainer webhook refuses it here)")
    return list(dict.fromkeys(problems))


# ---------------------------------------------------------------------------------------------
# The Argo template

def trainjob_step(name: str, manifest: dict, inputs: list, deadline: int | None = None) -> Resource:
    """A resource template that creates the TrainJob, owned by the workflow (deleted with it), and
    waits for it: succeeded when the trainer's job has succeeded, failed when Trainer marks it Failed
    (its activeDeadlineSeconds included). `inputs` are parameters the manifest uses (`{{inputs...}}`);
    `deadline` (seconds) bounds the wait, queueing included. The manifest is checked here, so a bad
    one fails `kubellm compile`, not the run."""
    problems = validate_trainjob(manifest)
    if problems:
        raise ValueError(f"TrainJob manifest of step {name!r}:\n  " + "\n  ".join(problems))
    for i in inputs:
        if not isinstance(i, Parameter):
            raise ValueError(f"step {name!r}: input {getattr(i, 'name', i)!r} is not a parameter; the pods of a "
                             "TrainJob get no Argo artifacts, so their data must be on the claim (pvc store)")
    return Resource(
        name=name, action="create", set_owner_reference=True,
        manifest=yaml.safe_dump(manifest, sort_keys=False, width=1000),
        success_condition=SUCCESS_CONDITION, failure_condition=FAILURE_CONDITION,
        inputs=list(inputs) or None, active_deadline_seconds=deadline,
    )


# ---------------------------------------------------------------------------------------------
# What a node of the torch runtime gets (the local runner's TrainJob, workflows/runner/localcluster.py)

def node_pod(spec: dict) -> tuple[dict, dict]:
    """(pod with the volumes, container with the volumeMounts) that spec.runtimePatches give the `node` pods."""
    volumes, mounts = [], []
    for patch in spec.get("runtimePatches") or []:
        rjobs = ((((patch or {}).get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}).get(
            "replicatedJobs") or []
        for rjob in rjobs:
            if (rjob or {}).get("name") != NODE:
                continue
            pod = (((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            volumes += pod.get("volumes") or []
            for c in pod.get("containers") or []:
                if c.get("name") == NODE:
                    mounts += c.get("volumeMounts") or []
    return {"volumes": volumes}, {"volumeMounts": mounts}


def procs_per_node(trainer: dict) -> str:
    """PET_NPROC_PER_NODE as the torch plugin sets it (EnforceMLPolicy): numProcPerNode; else "auto" with
    GPUs, else the node's CPU request (or limit) rounded up to whole cores, at least 1."""
    if trainer.get("numProcPerNode") is not None:
        return str(trainer["numProcPerNode"])
    res = trainer.get("resourcesPerNode") or {}
    if any("gpu" in k for side in ("limits", "requests") for k in res.get(side) or {}):
        return "auto"
    cpu = str((res.get("requests") or {}).get("cpu") or (res.get("limits") or {}).get("cpu") or "").strip()
    try:
        cores = math.ceil(float(cpu[:-1]) / 1000) if cpu.endswith("m") else math.ceil(float(cpu))
    except ValueError:
        cores = 0
    return str(max(1, cores))
