"""The building blocks every kubellm pipeline is wired from: one parameter type, one store (s3/pvc),
one container-step builder, one vLLM server template, one defaults-and-overrides merge, and the
parameter-check node that heads every workflow.

A pipeline module (distill.py, experiment.py, ...) declares `PARAMS` (name -> Param), a
`build(store, params)` that returns a Hera Workflow made of these blocks, and a `validate_params`
built on `check_params`. Nothing here knows a particular pipeline.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

from hera.workflows import Artifact, Container, Env, Parameter, S3Artifact, NoneArchiveStrategy, SecretEnv
from hera.workflows import models as m
from pydantic import Field

STORES = ("s3", "pvc")
SERVE_PORT = 8000
DATA_MOUNT = "/data"      # pvc store: every artifact is a folder under the kubellm-data claim
MODELS_MOUNT = "/models"  # model cache + staged adapters, shared with the server
METRICS_DIR = "/tmp/metrics"  # steps write summary numbers here; they become output parameters + metrics
# small files that become output parameters live on a per-pod emptyDir ("scratch"): the local runner
# maps a mounted folder (not a bare /tmp path) to the node's own folder, as a pod has its own
SCRATCH = m.Volume(name="scratch", empty_dir=m.EmptyDirVolumeSource(size_limit="64Mi"))

# The CPU and CUDA images (images/build.sh). A workflow compiled with GPUs defaults to the CUDA ones.
IMAGES = {
    "steps": {"cpu": "ghcr.io/kubellm/steps-cpu:0.1.0", "cuda": "ghcr.io/kubellm/steps-cuda:0.1.0"},
    "serve": {"cpu": "ghcr.io/kubellm/serve-cpu:0.1.0", "cuda": "ghcr.io/kubellm/serve:0.1.0"},
}

POD_SECURITY = m.PodSecurityContext(run_as_non_root=True, run_as_user=1000, run_as_group=1000, fs_group=1000,
                                    seccomp_profile=m.SeccompProfile(type="RuntimeDefault"))
# Argo pods cannot be patched by a kustomize overlay: GPU nodes' taint must be tolerated here
GPU_TOLERATIONS = [m.Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
SECURITY = m.SecurityContext(run_as_non_root=True, run_as_user=1000, allow_privilege_escalation=False,
                             capabilities=m.Capabilities(drop=["ALL"]))
# the optional hosted-API key (Secret kubellm-api-keys) for steps that may call a hosted model
API_KEY = SecretEnv(name="OPENAI_API_KEY", secret_name="kubellm-api-keys", secret_key="openai-api-key", optional=True)

# The controller registers a custom metric once per name and refuses a second help text for it
# (workflow/metrics: "Help for metric ... is already set"), so every template that reports a number
# names it from this one table; the `step` label tells the templates apart.
METRIC_HELP = {
    "rows": "rows a kubellm step completed (label step: which step)",
    "failed": "rows a kubellm step gave up on after retries (label step: which step)",
    "last_loss": "final training loss of a kubellm fine-tune",
    "tokens_per_s": "training tokens per second of a kubellm fine-tune",
    "mem_estimate_mb": "memory per training process a kubellm fine-tune estimated (MiB)",
    "rank_tokens_per_s": "training tokens per second of one rank of a kubellm fine-tune",
    "rank_peak_mem_mb": "peak memory of one rank of a kubellm fine-tune (MiB: RSS on CPU, CUDA allocated on GPUs)",
    "diff": "held-out score of a kubellm distillation: fine-tuned minus baseline (mean)",
    "finetuned": "held-out mean score of the fine-tuned student",
    "baseline": "held-out mean score of the baseline student",
    "fact_diff": "factual accuracy of a kubellm distillation on trained facts in new words: fine-tuned minus baseline",
    "fact_finetuned": "factual accuracy of the fine-tuned student on trained facts in new words",
    "fact_baseline": "factual accuracy of the baseline student on trained facts in new words",
    "accuracy": "test accuracy of a kubellm NLI model after fine-tuning",
    "zero_shot_accuracy": "test accuracy of a kubellm NLI model before fine-tuning",
    "accuracy_diff": "test accuracy of a kubellm NLI model: fine-tuned minus zero-shot",
    "rag_accuracy": "factual accuracy of a kubellm rag run's answers with retrieval",
    "closed_accuracy": "factual accuracy of a kubellm rag run's answers without retrieval",
    "rag_diff": "factual accuracy of a kubellm rag run: with retrieval minus without",
}


# ---------------------------------------------------------------------------------------------
# Parameters

@dataclass(frozen=True)
class Param:
    """A workflow parameter. `feeds` is the step config field whose type and bounds check the value
    ("module:Class.field", imported only when checking), or a type/Annotated type for parameters
    that feed no step field. `compile_time` marks a parameter whose value shapes the compiled YAML:
    the workflow's first node refuses a submit-time value that would need another compile."""
    default: str
    help: str
    feeds: Any = str
    enum: tuple[str, ...] | None = None
    compile_time: bool = False
    example: str | None = None  # shown in error messages when the default is no example (e.g. empty)

    def choices(self) -> tuple[str, ...] | None:
        if self.enum:
            return self.enum
        ann = _field_type(self.feeds)[0]
        return tuple(str(x) for x in get_args(ann)) if get_origin(ann) is Literal else None


@functools.lru_cache(maxsize=None)
def _field_type(feeds: Any) -> tuple[Any, Any]:
    """(annotation, pydantic TypeAdapter with the field's bounds) of a step config field or a type."""
    import importlib
    from typing import Annotated

    from pydantic import TypeAdapter

    if not isinstance(feeds, str):
        return feeds, TypeAdapter(feeds)
    module, _, path = feeds.partition(":")
    cls_name, _, field = path.partition(".")
    info = getattr(importlib.import_module(module), cls_name).model_fields[field]
    return info.annotation, TypeAdapter(Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation)


def _check_one(name: str, p: Param, value: str) -> None:
    from pydantic import ValidationError

    choices = p.choices()
    if choices and value not in choices:
        raise ValueError(f"parameter {name}={value!r} must be one of {list(choices)}")
    adapter = _field_type(p.feeds)[1]
    try:
        adapter.validate_python(value)
    except ValidationError as e:
        msg = "; ".join(err["msg"] for err in e.errors())
        where = f" (it sets {p.feeds.split(':')[1]})" if isinstance(p.feeds, str) else ""
        raise ValueError(f"parameter {name}={value!r}: {msg}{where}; e.g. -p {name}={p.example or p.default}") from None


def merge_params(pipeline: str, spec: dict[str, Param], params: dict[str, str] | None) -> dict[str, str]:
    """Every parameter's value: the given ones over the defaults; unknown names refused."""
    unknown = sorted(set(params or {}) - set(spec))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; {pipeline} takes: {', '.join(sorted(spec))}")
    return {k: p.default for k, p in spec.items()} | {k: str(v) for k, v in (params or {}).items()}


def check_params(pipeline: str, spec: dict[str, Param], params: dict[str, str] | None) -> dict[str, str]:
    """The merged values, each checked against the type and bounds of the step field it feeds."""
    values = merge_params(pipeline, spec, params)
    for k, p in spec.items():
        _check_one(k, p, values[k])
    return values


def check_images(values: dict[str, str], gpus: bool, names: tuple[str, ...]) -> None:
    """A GPU run on a CPU-only image fails inside its node: refuse it first, with the image to use."""
    if not gpus:
        return
    for k in names:
        kind = k.removesuffix("-image")
        if values[k] == IMAGES[kind]["cpu"]:
            raise ValueError(f"parameter {k}={values[k]!r} is the CPU image, and this run asks for GPUs: use "
                             f"-p {k}={IMAGES[kind]['cuda']} (or your own CUDA build, images/build.sh)")


def check_training(values: dict[str, str], model_param: str, images: tuple[str, ...], files: bool = True) -> None:
    """What a pipeline that fine-tunes refuses before any work: qlora without GPUs, a CPU image for a
    GPU run, and (`files`: on this machine) a model name that resolves nowhere."""
    from steps import models

    gpus = int(values["gpus"]) > 0
    if values["method"] == "qlora" and not gpus:
        raise ValueError("method=qlora quantizes the model to 4 bits with bitsandbytes, which needs a CUDA GPU: "
                         "compile with -p gpus=1 (CUDA images), or use -p method=lora on CPU")
    check_images(values, gpus, images)
    if files:
        try:
            models.check_name(values[model_param])
        except models.UnknownModel as e:
            raise ValueError(f"parameter {model_param}: {e}") from None


def image_defaults(params: dict[str, str] | None, images: tuple[str, ...]) -> dict[str, str]:
    """`params` with the CUDA builds as the default `images` (e.g. "serve-image") when `gpus` is set
    and not 0; an image given in `params` stays."""
    out = dict(params or {})
    if out.get("gpus", "0") not in ("0", ""):
        for k in images:
            out.setdefault(k, IMAGES[k.removesuffix("-image")]["cuda"])
    return out


# an optional OpenAI-compatible base URL (a workflow parameter that feeds several steps)
OptionalUrl = Annotated[str, Field(pattern=r"^(https?://\S+)?$")]
URL_EXAMPLE = "http://vllm.kubellm:8000 (empty: none)"


def wp(name: str) -> str:
    return "{{workflow.parameters.%s}}" % name


def inp(name: str) -> str:
    return "{{inputs.parameters.%s}}" % name


def workflow_fields(name: str, spec: dict[str, Param], values: dict[str, str], store: str) -> dict:
    """What every kubellm Workflow carries: its parameters with their compile-time values, the
    model-cache claim (plus the data claim on the pvc store) and scratch space, non-root pods in the
    batch priority class, the labels the k8s/ policies select, and a run-duration gauge."""
    volumes = [m.Volume(name="models", persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(
        claim_name="kubellm-models"))]
    if store == "pvc":
        volumes.append(m.Volume(name="data", persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(
            claim_name="kubellm-data")))
    labels = {"app.kubernetes.io/part-of": "kubellm", "kubellm/pipeline": name}
    return dict(
        generate_name=f"{name}-", entrypoint="main", service_account_name="kubellm-workflow",
        arguments=[Parameter(name=k, value=str(values[k]), description=p.help,
                             enum=list(p.choices()) if p.choices() else None)
                   for k, p in spec.items()],
        volumes=volumes + [SCRATCH], pod_gc=m.PodGC(strategy="OnPodSuccess"),
        labels=labels, pod_metadata=m.Metadata(labels=dict(labels)),
        security_context=POD_SECURITY, pod_priority_class_name="kubellm-batch",
        metrics=m.Metrics(prometheus=[m.Prometheus(
            name="kubellm_workflow_duration_seconds", help="Duration of the last kubellm workflow run",
            labels=[m.MetricLabel(key="pipeline", value=name), m.MetricLabel(key="status", value="{{workflow.status}}")],
            gauge=m.Gauge(value="{{workflow.duration}}", realtime=False))]),
    )


def check_node(pipeline: str, spec: dict[str, Param], values: dict[str, str]) -> Container:
    """The first node: checks every submitted parameter value as `kubellm compile` checks it, and
    refuses a compile-time parameter whose submitted value needs another compile (`argo submit -p`
    cannot change the shape of the compiled YAML)."""
    compiled = {k: values[k] for k, p in spec.items() if p.compile_time}
    return Container(
        name="check-params", image=wp("steps-image"), image_pull_policy="IfNotPresent",
        command=["python", "-m", "workflows.check"],
        args=["--compiled", json.dumps(compiled, sort_keys=True), pipeline]
        + [f"{k}={wp(k)}" for k in spec],
        resources=resources("100m", "256Mi"), security_context=SECURITY, active_deadline_seconds=600)


# ---------------------------------------------------------------------------------------------
# Store

class Store:
    """Where step folders live: Argo artifacts (s3) or paths on the shared kubellm-data claim (pvc).
    Per-task folders (`out`/`inp`/`arg`) are the task's own; keyed folders (`keyed_out`/`keyed_inp`)
    sit at fixed keys under one root, so a later step can gather the outputs of a fan-out."""

    def __init__(self, kind: str):
        if kind not in STORES:
            raise ValueError(f"store {kind!r} is not one of {STORES}")
        self.kind = kind

    def inp(self, name: str) -> tuple[list, str]:
        """(template inputs, path the command reads) for an input folder of a container template."""
        if self.kind == "s3":
            return [Artifact(name=name, path=f"/in/{name}")], f"/in/{name}"
        return [Parameter(name=f"{name}-dir")], inp(f"{name}-dir")

    def inputs(self, *names: str) -> tuple[list, dict[str, str]]:
        """`inp` for several folders: (template inputs, name -> path the command reads)."""
        ins, reads = [], {}
        for name in names:
            i, reads[name] = self.inp(name)
            ins += i
        return ins, reads

    def dag_inp(self, name: str) -> list:
        """The same input declared on a DAG template: Argo gives an artifact a path only in
        container and script templates (validate.go, validateNonLeaf)."""
        if self.kind == "s3":
            return [Artifact(name=name)]
        return [Parameter(name=f"{name}-dir")]

    def out(self, task: str, name: str) -> tuple[list, str]:
        if self.kind == "s3":
            return [Artifact(name=name, path=f"/out/{name}")], f"/out/{name}"
        return [], f"{DATA_MOUNT}/{{{{workflow.name}}}}/{task}/{name}"

    def arg(self, producer: str, name: str, as_name: str | None = None):
        """Task argument that hands `producer`'s output folder `name` to an input `as_name`."""
        as_name = as_name or name
        if self.kind == "s3":
            return m.Artifact(name=as_name, from_="{{tasks.%s.outputs.artifacts.%s}}" % (producer, name))
        return Parameter(name=f"{as_name}-dir", value=f"{DATA_MOUNT}/{{{{workflow.name}}}}/{producer}/{name}")

    def pass_on(self, name: str):
        """Task argument inside a DAG template handing on the DAG's own input folder `name`."""
        if self.kind == "s3":
            return m.Artifact(name=name, from_="{{inputs.artifacts.%s}}" % name)
        return Parameter(name=f"{name}-dir", value=inp(f"{name}-dir"))

    def keyed_out(self, name: str, key: str) -> tuple[list, str]:
        if self.kind == "s3":
            # stored as plain files (no tarball): CSVs and reports are readable straight from the bucket
            return [S3Artifact(name=name, path=f"/out/{name}", key=key,
                               archive=NoneArchiveStrategy())], f"/out/{name}"
        return [], f"{DATA_MOUNT}/{key}"

    def keyed_inp(self, name: str, key: str) -> tuple[list, str]:
        if self.kind == "s3":
            return [S3Artifact(name=name, path=f"/in/{name}", key=key)], f"/in/{name}"
        return [], f"{DATA_MOUNT}/{key}"

    def mounts(self) -> list[m.VolumeMount]:
        return [m.VolumeMount(name="data", mount_path=DATA_MOUNT)] if self.kind == "pvc" else []


# ---------------------------------------------------------------------------------------------
# Templates

def model_env() -> list[Env]:
    """Where steps and servers keep converted models and hub downloads: the kubellm-models claim."""
    return [Env(name="KUBELLM_CACHE", value=MODELS_MOUNT), Env(name="HF_HOME", value=f"{MODELS_MOUNT}/hf")]


def resources(cpu: str, mem: str) -> m.ResourceRequirements:
    """Literal quantities only: Argo decodes `resources` as Kubernetes quantities before it substitutes
    `{{...}}`, so anything templated goes through `pod_spec_patch`."""
    return m.ResourceRequirements(requests={"cpu": cpu, "memory": mem}, limits={"cpu": cpu, "memory": mem})


def pod_spec_patch(requests: dict[str, str] | None = None, limits: dict[str, str] | None = None,
                   raw: dict[str, str] | None = None) -> str | None:
    """A podSpecPatch that sets the main container's templated requests/limits (a GPU count from a
    parameter, per-model cpu/memory) and raw JSON fields (`raw`: key -> a JSON text or a `{{...}}`
    whose value is JSON, e.g. a node selector parameter). Argo substitutes it before patching."""
    parts = []
    res = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    if res:
        parts.append('"containers": ' + json.dumps([{"name": "main", "resources": res}]))
    parts += [f'"{k}": {v}' for k, v in (raw or {}).items()]
    return "{" + ", ".join(parts) + "}" if parts else None


def _retry(limit: int = 3, policy: str = "Always") -> m.RetryStrategy:
    return m.RetryStrategy(limit=str(limit), retry_policy=policy,
                           backoff=m.Backoff(duration="30s", factor="2", max_duration="30m"))


def _memo(key_param: str = "memo-key") -> m.Memoize:
    # key = a hash of the node's inputs (steps.memokey); the ConfigMap stores output references only
    return m.Memoize(key=inp(key_param), max_age="720h",
                     cache=m.Cache(config_map=m.LocalObjectReference(name="kubellm-memo")))


# per-rank numbers of a training step (metric_outputs `ranks`)
RANK_METRICS = ("tokens_per_s", "peak_mem_mb")


def metric_outputs(step: str, names: tuple[str, ...], ranks: int = 0) -> tuple[list, m.Metrics]:
    """Output parameters read from the step's metrics files, and Prometheus gauges over them
    (shown in the Argo UI and scraped from the controller). `ranks`: also each training rank's
    tokens/s and peak memory (files rank<i>_<name>), as gauges labelled with the rank."""
    params = [Parameter(name=k, value_from=m.ValueFrom(path=f"{METRICS_DIR}/{k}", default="0")) for k in names]
    gauges = [m.Prometheus(name=f"kubellm_{k}", help=METRIC_HELP[k], labels=[m.MetricLabel(key="step", value=step)],
                           gauge=m.Gauge(value="{{outputs.parameters.%s}}" % k, realtime=False))
              for k in names]
    for r in range(ranks):
        for k in RANK_METRICS:
            params.append(Parameter(name=f"rank{r}-{k}", value_from=m.ValueFrom(path=f"{METRICS_DIR}/rank{r}_{k}",
                                                                               default="0")))
            gauges.append(m.Prometheus(name=f"kubellm_rank_{k}", help=METRIC_HELP[f"rank_{k}"],
                                       labels=[m.MetricLabel(key="step", value=step),
                                               m.MetricLabel(key="rank", value=str(r))],
                                       gauge=m.Gauge(value="{{outputs.parameters.rank%d-%s}}" % (r, k), realtime=False)))
    return params, m.Metrics(prometheus=gauges)


def container_step(name: str, module: str, args: list[str], store: Store, inputs: list, outputs: list,
                   cpu: str = "1", mem: str = "2Gi", gpus: str | None = None, models: bool = False,
                   retry: bool = False, env: list | None = None, deadline: int = 6 * 3600,
                   metrics: tuple[str, ...] = (), memoize: bool = False,
                   mounts: list[m.VolumeMount] | None = None, image: str = "steps-image",
                   ranks: int = 0, retry_on: str | None = None, labels: dict[str, str] | None = None) -> Container:
    """One step module as a container template: `python -m <module> <args>` in the steps image, with
    the store's mounts, the model cache (`models`), summary numbers as output parameters and gauges
    (`metrics`: names from METRIC_HELP), retries for steps that call a network service, memoization
    keyed on a `memo-key` input (s3 store only), and `gpus` (a GPU count, usually a parameter) set
    through podSpecPatch. `ranks`: the step trains with that many torchrun ranks, each rank's numbers
    become gauges labelled with its rank. `retry_on`: retry only on this Argo retry policy (e.g.
    OnError: a pod deleted or preempted, not a step that failed on its input). `labels`: the pod's
    own labels (Kueue's queue and priority class for GPU work)."""
    vmounts = store.mounts() + ([m.VolumeMount(name="models", mount_path=MODELS_MOUNT)] if models else [])
    vmounts += mounts or []
    prom = None
    if metrics:
        mparams, prom = metric_outputs(name, metrics, ranks)
        outputs = list(outputs) + mparams
        args = args + ["--metrics-dir", METRICS_DIR]
        vmounts.append(m.VolumeMount(name="scratch", mount_path=METRICS_DIR))
    if memoize:
        # memoized outputs must be artifact references that outlive the workflow (s3); on the pvc
        # store paths contain the workflow name, so memoization would hand back missing folders
        inputs = list(inputs) + [Parameter(name="memo-key")]
    return Container(
        metrics=prom, memoize=_memo() if memoize and store.kind == "s3" else None,
        name=name, image=wp(image), image_pull_policy="IfNotPresent",
        command=["python", "-m", module], args=args, inputs=inputs or None, outputs=outputs or None,
        env=(model_env() + (env or [])) if models else env,
        volume_mounts=vmounts or None, resources=resources(cpu, mem), security_context=SECURITY,
        pod_spec_patch=pod_spec_patch(limits={"nvidia.com/gpu": gpus}) if gpus else None,
        retry_strategy=_retry() if retry else _retry(policy=retry_on) if retry_on else None,
        active_deadline_seconds=deadline,
        priority_class_name="kubellm-training" if gpus else None, tolerations=GPU_TOLERATIONS if gpus else None,
        labels=labels or None,
    )


def vllm_server(name: str, args: list[str], inputs: list, port: int = SERVE_PORT, cpu: str = "2",
                mem: str = "12Gi", patch: str | None = None, tolerations: bool = True,
                mounts: list[m.VolumeMount] | None = None, labels: dict[str, str] | None = None) -> Container:
    """A daemon vLLM server (steps.serve) in the serve image, ready when /health answers, with the
    labels and named port that k8s/ NetworkPolicies and the vLLM PodMonitor select. `patch` is its
    podSpecPatch (GPU count, templated cpu/memory, placement)."""
    return Container(
        name=name, image=wp("serve-image"), image_pull_policy="IfNotPresent", daemon=True,
        command=["python", "-m", "steps.serve"],
        args=args + ["--host", "0.0.0.0", "--port", str(port)],
        inputs=inputs, env=model_env(),
        volume_mounts=[m.VolumeMount(name="models", mount_path=MODELS_MOUNT)] + (mounts or []),
        readiness_probe=m.Probe(http_get=m.HTTPGetAction(path="/health", port=port),
                                initial_delay_seconds=20, period_seconds=5, timeout_seconds=5),
        resources=resources(cpu, mem), pod_spec_patch=patch,
        security_context=SECURITY, active_deadline_seconds=12 * 3600,
        ports=[m.ContainerPort(name="http", container_port=port)],
        labels={"app.kubernetes.io/component": "serve", "app.kubernetes.io/name": "vllm", **(labels or {})},
        priority_class_name="kubellm-inference", tolerations=GPU_TOLERATIONS if tolerations else None,
    )


def add_templates(wf, templates: list) -> None:
    """Templates that only tasks of nested DAGs use are not added by Hera's context: add them once."""
    for t in templates:
        if t not in wf.templates:
            wf.templates.append(t)

