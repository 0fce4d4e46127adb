"""The distill pipeline as one Hera Workflow: the only definition of it.

    prepare-student ─┬─ serve (daemon: vLLM, base model + runtime LoRA) ─┐
    harvest ─────────┴──────────────────────────────── generate ────────┼─ baseline ──────────┐
                                                                        └─ finetune ─ finetuned ┴─ evaluate

The teacher writes questions and grounded answers (generate); the student answers the held-out
questions before (baseline) and after fine-tuning (finetuned); evaluate writes the report.
By default the teacher is the student's own base model with the source document in its prompt
(context distillation), so one server start serves teacher, baseline and fine-tuned student.

    kubellm compile distill -o distill.yaml                  # artifacts through S3 (the default)
    kubellm compile distill --store pvc -o distill-pvc.yaml  # artifacts on the kubellm-data PVC
    kubellm run distill -p steps=20                          # this machine, no cluster
"""

from __future__ import annotations

from dataclasses import dataclass

from hera.workflows import DAG, Artifact, Container, Env, NoneArchiveStrategy, Parameter, SecretEnv, Task, Workflow
from hera.workflows import models as m

STORES = ("s3", "pvc")
SERVE_PORT = 8000
DATA_MOUNT = "/data"      # pvc store: every artifact is a folder under the kubellm-data claim
MODELS_MOUNT = "/models"  # model cache + staged adapters, shared with the server
METRICS_DIR = "/tmp/metrics"  # steps write summary numbers here; they become output parameters + metrics
# small files that become output parameters live on a per-pod emptyDir ("scratch"): the local runner
# maps a mounted folder (not a bare /tmp path) to the node's own folder, as a pod has its own
SCRATCH = m.Volume(name="scratch", empty_dir=m.EmptyDirVolumeSource(size_limit="64Mi"))


@dataclass(frozen=True)
class P:
    default: str
    help: str
    enum: tuple[str, ...] | None = None


PARAMS: dict[str, P] = {
    "student": P("smollm2-135m", "student model: bundled name, hub ID (microsoft/phi-2) or folder"),
    "teacher": P("smollm2-135m", "teacher: the served student name (context distillation), a model at "
                                 "teacher-url, or openai:MODEL (key from the kubellm-api-keys Secret)"),
    "teacher-url": P("", "OpenAI-compatible base URL of the teacher; empty = the workflow's own server"),
    "topics": P("all", "comma-separated topics (see `python -m steps.harvest --help`), or all"),
    "num-questions": P("64", "training questions (one per knowledge-base document)"),
    "heldout-unseen": P("16", "held-out questions on documents never trained on"),
    "heldout-paraphrase": P("16", "held-out rephrasings of training questions"),
    "steps": P("60", "fine-tuning optimizer steps"),
    "method": P("lora", "fine-tuning method", ("lora", "qlora", "full")),
    "lora-r": P("16", "LoRA rank (the server's --max-lora-rank follows it)"),
    "learning-rate": P("2e-4", "peak learning rate"),
    "batch-size": P("2", "per-device batch size"),
    "grad-accum": P("2", "gradient accumulation steps"),
    "answer-tokens": P("80", "max tokens per answer (teacher and students)"),
    "concurrency": P("16", "model requests in flight per step"),
    "seed": P("0", "seed for selection, sampling, training and bootstrap"),
    "gpus": P("0", "GPUs for the serve and finetune nodes (nvidia.com/gpu)"),
    "steps-image": P("ghcr.io/kubellm/steps-cpu:0.1.0", "image with the kubellm steps"),
    "serve-image": P("ghcr.io/kubellm/serve-cpu:0.1.0", "image with vLLM and the kubellm serve step (serve:TAG for CUDA nodes)"),
}

POD_SECURITY = m.PodSecurityContext(run_as_non_root=True, run_as_user=1000, run_as_group=1000, fs_group=1000,
                                    seccomp_profile=m.SeccompProfile(type="RuntimeDefault"))
# Argo pods cannot be patched by a kustomize overlay: GPU nodes' taint must be tolerated here
GPU_TOLERATIONS = [m.Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
SECURITY = m.SecurityContext(run_as_non_root=True, run_as_user=1000, allow_privilege_escalation=False,
                             capabilities=m.Capabilities(drop=["ALL"]))


def _model_env() -> list[Env]:
    """Where steps and servers keep converted models and hub downloads: the kubellm-models claim."""
    return [Env(name="KUBELLM_CACHE", value=MODELS_MOUNT), Env(name="HF_HOME", value=f"{MODELS_MOUNT}/hf")]


def _res(cpu: str, mem: str, gpu: bool = False) -> m.ResourceRequirements:
    limits = {"cpu": cpu, "memory": mem}
    if gpu:
        limits["nvidia.com/gpu"] = "{{workflow.parameters.gpus}}"
    return m.ResourceRequirements(requests={"cpu": cpu, "memory": mem}, limits=limits)


def _retry(limit: int = 3) -> m.RetryStrategy:
    return m.RetryStrategy(limit=str(limit), retry_policy="Always",
                           backoff=m.Backoff(duration="30s", factor="2", max_duration="30m"))


def _wp(name: str) -> str:
    return "{{workflow.parameters.%s}}" % name


def _metrics(step: str, values: dict[str, str]) -> tuple[list, m.Metrics]:
    """Output parameters read from the step's metrics files, and Prometheus gauges over them
    (shown in the Argo UI and scraped from the controller)."""
    params = [Parameter(name=k, value_from=m.ValueFrom(path=f"{METRICS_DIR}/{k}", default="0")) for k in values]
    gauges = [m.Prometheus(name=f"kubellm_{k}", help=h, labels=[m.MetricLabel(key="step", value=step)],
                           gauge=m.Gauge(value="{{outputs.parameters.%s}}" % k, realtime=False))
              for k, h in values.items()]
    return params, m.Metrics(prometheus=gauges)


def _memo(key_param: str = "memo-key") -> m.Memoize:
    # key = a hash of the node's inputs (steps.memokey); the ConfigMap stores output references only
    return m.Memoize(key="{{inputs.parameters.%s}}" % key_param, max_age="720h",
                     cache=m.Cache(config_map=m.LocalObjectReference(name="kubellm-memo")))


class _Store:
    """Where step folders live: Argo artifacts (s3) or paths on the shared kubellm-data claim (pvc)."""

    def __init__(self, kind: str):
        if kind not in STORES:
            raise ValueError(f"store {kind!r} is not one of {STORES}; a cluster workflow cannot use local storage")
        self.kind = kind

    def inp(self, name: str) -> tuple[list, str]:
        """(template inputs, path the command reads) for an input folder."""
        if self.kind == "s3":
            return [Artifact(name=name, path=f"/in/{name}")], f"/in/{name}"
        return [Parameter(name=f"{name}-dir")], "{{inputs.parameters.%s-dir}}" % name

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

    def mounts(self) -> list[m.VolumeMount]:
        return [m.VolumeMount(name="data", mount_path=DATA_MOUNT)] if self.kind == "pvc" else []


def _step(name: str, module: str, args: list[str], store: _Store, inputs: list, outputs: list,
          cpu: str = "2", mem: str = "8Gi", gpu: bool = False, models: bool = False, retry: bool = False,
          env: list | None = None, deadline: int = 3 * 3600, metrics: dict[str, str] | None = None,
          memoize: bool = False) -> Container:
    mounts = store.mounts() + ([m.VolumeMount(name="models", mount_path=MODELS_MOUNT)] if models else [])
    prom = None
    if metrics:
        mparams, prom = _metrics(name, metrics)
        outputs = list(outputs) + mparams
        args = args + ["--metrics-dir", METRICS_DIR]
        mounts = mounts + [m.VolumeMount(name="scratch", mount_path=METRICS_DIR)]
    if memoize:
        # memoized outputs must be artifact references that outlive the workflow (s3); on the pvc
        # store paths contain the workflow name, so memoization would hand back missing folders
        inputs = list(inputs) + [Parameter(name="memo-key")]
    return Container(
        metrics=prom, memoize=_memo() if memoize and store.kind == "s3" else None,
        name=name, image=_wp("steps-image"), image_pull_policy="IfNotPresent",
        command=["python", "-m", module], args=args, inputs=inputs or None, outputs=outputs or None,
        env=_model_env()
        + (env or []) if models else env,
        volume_mounts=mounts or None, resources=_res(cpu, mem, gpu), security_context=SECURITY,
        retry_strategy=_retry() if retry else None, active_deadline_seconds=deadline,
        priority_class_name="kubellm-training" if gpu else None, tolerations=GPU_TOLERATIONS if gpu else None,
    )


def workflow_fields(name: str, spec: dict[str, P], values: dict[str, str], store: str) -> dict:
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
        arguments=[Parameter(name=k, value=values[k], description=p.help, enum=list(p.enum) if p.enum else None)
                   for k, p in spec.items()],
        volumes=volumes + [SCRATCH], pod_gc=m.PodGC(strategy="OnPodSuccess"),
        labels=labels, pod_metadata=m.Metadata(labels=dict(labels)),
        security_context=POD_SECURITY, pod_priority_class_name="kubellm-batch",
        metrics=m.Metrics(prometheus=[m.Prometheus(
            name="kubellm_workflow_duration_seconds", help="Duration of the last kubellm workflow run",
            labels=[m.MetricLabel(key="pipeline", value=name), m.MetricLabel(key="status", value="{{workflow.status}}")],
            gauge=m.Gauge(value="{{workflow.duration}}", realtime=False))]),
    )


def with_defaults(pipeline: str, spec: dict[str, P], params: dict[str, str] | None) -> dict[str, str]:
    """Every parameter's compile-time value: the given ones over the defaults; unknown names refused."""
    unknown = sorted(set(params or {}) - set(spec))
    if unknown:
        raise ValueError(f"unknown {pipeline} parameter(s) {unknown}; valid: {sorted(spec)}")
    return {k: p.default for k, p in spec.items()} | dict(params or {})


# the optional hosted-API key (Secret kubellm-api-keys) for steps that may call a hosted model
API_KEY = SecretEnv(name="OPENAI_API_KEY", secret_name="kubellm-api-keys", secret_key="openai-api-key", optional=True)


def build(store: str = "s3", params: dict[str, str] | None = None, serve_port: int = SERVE_PORT,
          name: str = "distill") -> Workflow:
    st = _Store(store)
    values = with_defaults("distill", PARAMS, params)

    prepare = _step("prepare-model", "steps.models", ["--name", "{{inputs.parameters.model}}",
                                                       "--out-param", "/tmp/model-path"],
                    st, [Parameter(name="model")],
                    [Parameter(name="model-path", value_from=m.ValueFrom(path="/tmp/model-path"))],
                    cpu="2", mem="6Gi", models=True)

    gen_inputs = ";".join(f"{k}={_wp(k)}" for k in (
        "steps-image", "teacher", "teacher-url", "student", "topics", "num-questions", "heldout-unseen",
        "heldout-paraphrase", "answer-tokens", "seed"))
    ft_inputs = ";".join(f"{k}={_wp(k)}" for k in (
        "method", "steps", "lora-r", "learning-rate", "batch-size", "grad-accum"))
    memokeys = Container(
        name="memo-keys", image=_wp("steps-image"), image_pull_policy="IfNotPresent",
        command=["python", "-m", "steps.memokey"],
        args=["--out-dir", "/tmp/keys", f"generate={gen_inputs}", f"finetune={ft_inputs}"],
        volume_mounts=[m.VolumeMount(name="scratch", mount_path="/tmp/keys")],
        outputs=[Parameter(name=k, value_from=m.ValueFrom(path=f"/tmp/keys/{k}")) for k in ("generate", "finetune")],
        resources=_res("100m", "256Mi"), security_context=SECURITY, active_deadline_seconds=600)

    kb_out, kb_path = st.out("harvest", "kb")
    harvest = _step("harvest", "steps.harvest", ["--out", kb_path, "--topics", _wp("topics")], st, [], kb_out,
                    cpu="1", mem="1Gi")

    serve = Container(
        name="serve", image=_wp("serve-image"), image_pull_policy="IfNotPresent", daemon=True,
        command=["python", "-m", "steps.serve"],
        args=["--model", "{{inputs.parameters.model}}", "--served-name", "{{inputs.parameters.served-name}}",
              "--host", "0.0.0.0", "--port", str(serve_port), "--max-lora-rank", _wp("lora-r")],
        inputs=[Parameter(name="model"), Parameter(name="served-name")],
        env=_model_env(),
        volume_mounts=[m.VolumeMount(name="models", mount_path=MODELS_MOUNT)],
        readiness_probe=m.Probe(http_get=m.HTTPGetAction(path="/health", port=serve_port),
                                initial_delay_seconds=20, period_seconds=5, timeout_seconds=5),
        resources=_res("2", "12Gi", gpu=True), security_context=SECURITY,
        active_deadline_seconds=6 * 3600,
        # k8s/ NetworkPolicies and the vLLM PodMonitor select these labels and the named port
        ports=[m.ContainerPort(name="http", container_port=serve_port)],
        labels={"app.kubernetes.io/component": "serve", "app.kubernetes.io/name": "vllm"},
        priority_class_name="kubellm-inference", tolerations=GPU_TOLERATIONS,
    )

    kb_in, kb_read = st.inp("kb")
    data_out, data_path = st.out("generate", "data")
    generate = _step(
        "generate", "steps.generate",
        ["--kb", kb_read, "--out", data_path, "--teacher", _wp("teacher"), "--url", _wp("teacher-url"),
         "--served-url", "{{inputs.parameters.served-url}}", "--topics", _wp("topics"),
         "--num-questions", _wp("num-questions"), "--heldout-unseen", _wp("heldout-unseen"),
         "--heldout-paraphrase", _wp("heldout-paraphrase"), "--max-tokens", _wp("answer-tokens"),
         "--concurrency", _wp("concurrency"), "--seed", _wp("seed")],
        st, kb_in + [Parameter(name="served-url")], data_out, cpu="1", mem="2Gi", retry=True, env=[API_KEY],
        metrics={"rows": "rows the teacher produced (training + held-out)", "failed": "documents dropped"},
        memoize=True)

    def answer(tname: str, lora: bool) -> Container:
        d_in, d_read = st.inp("data")
        a_out, a_path = st.out(tname, "answers")
        args = ["--input", d_read, "--out", a_path, "--model", "{{inputs.parameters.model}}",
                "--url", "{{inputs.parameters.url}}", "--max-tokens", _wp("answer-tokens"),
                "--concurrency", _wp("concurrency"), "--seed", _wp("seed")]
        ins = d_in + [Parameter(name="model"), Parameter(name="url")]
        if lora:
            ad_in, ad_read = st.inp("finetune")
            ins += ad_in
            args += ["--lora-name", "{{inputs.parameters.model}}-ft", "--lora-path", f"{ad_read}/adapter",
                     "--lora-stage-dir", f"{MODELS_MOUNT}/adapters/{{{{workflow.name}}}}"]
        return _step(tname, "steps.query", args, st, ins, a_out, cpu="1", mem="1Gi", retry=True, models=lora,
                     metrics={"rows": "rows answered", "failed": "rows failed after retries"})

    baseline, finetuned = answer("answer-baseline", False), answer("answer-finetuned", True)

    d_in, d_read = st.inp("data")
    ft_out, ft_path = st.out("finetune", "finetune")
    finetune = _step(
        "finetune", "steps.finetune",
        ["--data", d_read, "--out", ft_path, "--base-model", "{{inputs.parameters.model}}",
         "--method", _wp("method"), "--max-steps", _wp("steps"), "--r", _wp("lora-r"),
         "--learning-rate", _wp("learning-rate"), "--batch-size", _wp("batch-size"),
         "--grad-accum", _wp("grad-accum"), "--seed", _wp("seed")],
        st, d_in + [Parameter(name="model")], ft_out, cpu="2", mem="12Gi", gpu=True, models=True,
        deadline=12 * 3600, metrics={"last_loss": "final training loss", "tokens_per_s": "training tokens/s"},
        memoize=True)

    ins = []
    reads = {}
    for nm in ("data", "baseline", "finetuned", "finetune", "kb"):
        i, r = st.inp(nm)
        ins += i
        reads[nm] = r
    rep_out, rep_path = st.out("evaluate", "report")
    for a in rep_out:
        a.archive = NoneArchiveStrategy()  # stored as files: the Argo UI opens report.html directly
    evaluate = _step(
        "evaluate", "steps.evaluate",
        ["--data", reads["data"], "--baseline", reads["baseline"], "--finetuned", reads["finetuned"],
         "--finetune", reads["finetune"], "--kb", reads["kb"], "--out", rep_path,
         "--teacher", "{{inputs.parameters.teacher}}", "--student", _wp("student"), "--seed", _wp("seed")],
        st, ins + [Parameter(name="teacher")], rep_out, cpu="2", mem="4Gi",
        metrics={"diff": "held-out score: fine-tuned minus baseline (mean)", "finetuned": "fine-tuned mean score",
                 "baseline": "baseline mean score"})

    served_url = "http://{{tasks.serve.ip}}:%d" % serve_port
    with Workflow(
        **workflow_fields(name, PARAMS, values, st.kind),
        # compiled for GPUs (-p gpus=N at compile time): queue whole runs on the kubellm-semaphores
        # `gpu` key. Workflow level on purpose: serve keeps its GPU while finetune needs another.
        synchronization=m.Synchronization(semaphores=[m.SemaphoreRef(config_map_key_ref=m.ConfigMapKeySelector(
            name="kubellm-semaphores", key="gpu"))]) if int(values["gpus"]) > 0 else None,
    ) as wf:
        templates = [memokeys, prepare, harvest, serve, generate, baseline, finetuned, finetune, evaluate]
        with DAG(name="main"):
            t_prep = Task(name="prepare-student", template=prepare,
                          arguments=[Parameter(name="model", value=_wp("student"))])
            t_harvest = Task(name="harvest", template=harvest)
            t_keys = Task(name="memo-keys", template=memokeys)
            student_path = "{{tasks.prepare-student.outputs.parameters.model-path}}"
            t_serve = Task(name="serve", template=serve, depends="prepare-student",
                           arguments=[Parameter(name="model", value=student_path),
                                      Parameter(name="served-name", value=_wp("student"))])
            t_gen = Task(name="generate", template=generate, depends="harvest && serve && memo-keys",
                         arguments=[st.arg("harvest", "kb"), Parameter(name="served-url", value=served_url),
                                    Parameter(name="memo-key", value="{{tasks.memo-keys.outputs.parameters.generate}}")])
            t_base = Task(name="answer-baseline", template=baseline, depends="generate",
                          arguments=[st.arg("generate", "data"), Parameter(name="model", value=_wp("student")),
                                     Parameter(name="url", value=served_url)])
            t_ft = Task(name="finetune", template=finetune, depends="generate",
                        arguments=[st.arg("generate", "data"), Parameter(name="model", value=student_path),
                                   Parameter(name="memo-key", value="{{tasks.memo-keys.outputs.parameters.finetune}}")])
            t_fta = Task(name="answer-finetuned", template=finetuned, depends="finetune && answer-baseline",
                         arguments=[st.arg("generate", "data"), st.arg("finetune", "finetune"),
                                    Parameter(name="model", value=_wp("student")),
                                    Parameter(name="url", value=served_url)])
            t_eval = Task(name="evaluate", template=evaluate, depends="answer-finetuned",
                          arguments=[st.arg("generate", "data"), st.arg("answer-baseline", "answers", "baseline"),
                                     st.arg("answer-finetuned", "answers", "finetuned"),
                                     st.arg("finetune", "finetune"), st.arg("harvest", "kb"),
                                     Parameter(name="teacher", value=_wp("teacher"))])
            del t_keys, t_prep, t_harvest, t_serve, t_gen, t_base, t_ft, t_fta, t_eval
        for t in templates:
            wf.templates.append(t) if t not in wf.templates else None
    return wf


def checked_values(pipeline: str, spec: dict[str, P], params: dict[str, str]) -> dict[str, str]:
    """Defaults overridden by `params`; unknown names and values outside an enum are errors."""
    values = {k: p.default for k, p in spec.items()}
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; {pipeline} takes: {', '.join(sorted(spec))}")
    values.update(params)
    for k, p in spec.items():
        if p.enum and values[k] not in p.enum:
            raise ValueError(f"parameter {k}={values[k]!r} must be one of {list(p.enum)}")
    return values


def validate_params(params: dict[str, str]) -> dict[str, str]:
    """Fail before any work on a value that cannot work, saying how to fix it."""
    from steps import models
    from steps.harvest import validate_topics

    values = checked_values("distill", PARAMS, params)
    for k in ("num-questions", "heldout-unseen", "heldout-paraphrase", "steps", "lora-r", "batch-size",
              "grad-accum", "answer-tokens", "concurrency", "seed", "gpus"):
        try:
            n = int(values[k])
        except ValueError:
            raise ValueError(f"parameter {k}={values[k]!r} must be a whole number, e.g. -p {k}={PARAMS[k].default}") from None
        if n < 0 or (n == 0 and k not in ("heldout-unseen", "heldout-paraphrase", "seed", "gpus")):
            raise ValueError(f"parameter {k}={n} must be {'>= 0' if k in ('seed', 'gpus') else '> 0'}")
    try:
        float(values["learning-rate"])
    except ValueError:
        raise ValueError(f"parameter learning-rate={values['learning-rate']!r} must be a number like 2e-4") from None
    if int(values["heldout-paraphrase"]) > int(values["num-questions"]):
        raise ValueError("heldout-paraphrase cannot exceed num-questions (it rephrases training questions)")
    try:
        models.check_name(values["student"])
    except models.UnknownModel as e:
        raise ValueError(f"parameter student: {e}") from None
    t = values["teacher"]
    if not t.startswith("openai:") and not values["teacher-url"] and t != values["student"]:
        raise ValueError(f"teacher {t!r} is not served by this workflow (it serves the student "
                         f"{values['student']!r}): set -p teacher={values['student']} for context distillation, "
                         "-p teacher-url=URL for a teacher served elsewhere, or -p teacher=openai:MODEL")
    topics = [x.strip() for x in values["topics"].split(",") if x.strip()]
    validate_topics(topics)
    return values
