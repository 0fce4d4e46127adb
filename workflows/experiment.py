"""The experiment pipeline as one Hera Workflow: serve several models, one at a time (or N at a
time), query every study's CSV rows, extract structured answers, score candidate answers exactly.

    plan ── model (withParam: one per model, at most `max-servers` at once) ──────────── collect
              serve (daemon: vLLM, no LoRA) ─ study (withParam: one per study)
                                                 query ─ extract
                                                 probabilities

Outputs land under `{experiment}/{model}/{timestamp}/` (an S3 prefix of the artifact repository,
or a folder on the kubellm-data PVC): each study's step folders `{study}/raw|structured|probabilities/`
and, once collect has checked them, `{model}_{study}_raw_responses.csv`, `..._structured.csv` and
`..._probabilities.csv` beside them. The experiment manifest and report go to
`{experiment}/report/{timestamp}/`.

Model servers run one at a time by default: `parallelism` on the main DAG counts each model's
nested DAG (its server included) as one running task, so the next model's server starts only after
the previous one is stopped. A cluster with more GPUs compiles with `-p max-servers=N`.

    kubellm compile experiment -o experiment.yaml                     # S3 artifact repository
    kubellm compile experiment --store pvc -p max-servers=4 -o exp.yaml
    argo submit experiment.yaml -p models='["google/gemma-2-9b-it", {"name": "meta-llama/Meta-Llama-3-70B-Instruct", "gpus": 4}]'
    kubellm run experiment -p studies=study1 -p limit=4               # this machine, no cluster
"""

from __future__ import annotations

from hera.workflows import DAG, Artifact, Container, NoneArchiveStrategy, Parameter, S3Artifact, Task, Workflow
from hera.workflows import models as m

from workflows.distill import (DATA_MOUNT, MODELS_MOUNT, SECURITY,
                               SERVE_PORT, API_KEY, P, _model_env, _step, _wp, checked_values,
                               with_defaults, workflow_fields)

STORES = ("s3", "pvc")

PARAMS: dict[str, P] = {
    "experiment": P("demo", "experiment name: the top folder (S3 prefix / PVC path) of the outputs"),
    "models": P("smollm2-135m", "comma-separated models (bundled name, hub ID, folder), or a JSON list of "
                                "{name, gpus, cpu, memory} for per-model resources"),
    "studies": P("study1,study2", "comma-separated studies: bundled names (workflows/studies) or YAML paths"),
    "limit": P("0", "use only the first N rows of each study CSV (0 = all)"),
    "extractor": P("", "model that extracts structured answers: empty = each model extracts its own "
                       "responses; else a model served at extractor-url, or openai:MODEL"),
    "extractor-url": P("", "OpenAI-compatible base URL of the extractor (with extractor set)"),
    "extract-mode": P("auto", "structured = server-side JSON schema; prompt = ask and parse; auto = structured, "
                              "falling back to prompt", ("auto", "structured", "prompt")),
    "concurrency": P("16", "requests in flight per step"),
    "gpus": P("0", "default GPUs per model server (per-model in the models JSON)"),
    "cpu": P("2", "default CPUs per model server"),
    "memory": P("12Gi", "default memory per model server"),
    "node-selector": P("{}", "JSON node selector for model servers, e.g. {\"nvidia.com/gpu.product\": \"NVIDIA-A100\"}"),
    "tolerations": P('[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
                     "JSON list of tolerations for model servers (replaces the default, which tolerates GPU nodes' taint)"),
    "max-servers": P("1", "model servers up at once (compile-time: Argo `parallelism` of the main DAG)"),
    "steps-image": P("ghcr.io/kubellm/steps-cpu:0.1.0", "image with the kubellm steps"),
    "serve-image": P("ghcr.io/kubellm/serve-cpu:0.1.0", "image with vLLM and the kubellm serve step"),
}


class _Keyed:
    """Step folders at fixed keys under the experiment root: key-only S3 artifacts (the workflow's
    artifact repository supplies bucket and credentials) or paths on the kubellm-data claim. Fixed
    keys are what let collect gather the outputs of every fanned-out model and study."""

    def __init__(self, kind: str):
        if kind not in STORES:
            raise ValueError(f"store {kind!r} is not one of {STORES}; a cluster workflow cannot use local storage")
        self.kind = kind

    def out(self, name: str, key: str) -> tuple[list, str]:
        if self.kind == "s3":
            # stored as plain files (no tarball): the CSVs are readable straight from the bucket
            return [S3Artifact(name=name, path=f"/out/{name}", key=key, archive=NoneArchiveStrategy())], f"/out/{name}"
        return [], f"{DATA_MOUNT}/{key}"

    def inp(self, name: str, key: str) -> tuple[list, str]:
        if self.kind == "s3":
            return [S3Artifact(name=name, path=f"/in/{name}", key=key)], f"/in/{name}"
        return [], f"{DATA_MOUNT}/{key}"

    def mounts(self) -> list[m.VolumeMount]:
        return [m.VolumeMount(name="data", mount_path=DATA_MOUNT)] if self.kind == "pvc" else []


def _container(name: str, module: str, args: list[str], store: _Keyed, inputs: list, outputs: list,
               cpu: str = "1", mem: str = "2Gi", deadline: int = 6 * 3600, **kw) -> Container:
    """distill's step container (mounts, metrics, model cache env, retries) with this pipeline's sizes."""
    return _step(name, module, args, store, inputs, outputs, cpu=cpu, mem=mem, deadline=deadline, **kw)


def build(store: str = "s3", params: dict[str, str] | None = None, serve_port: int = SERVE_PORT,
          name: str = "experiment") -> Workflow:
    st = _Keyed(store)
    values = with_defaults("experiment", PARAMS, params)
    exp, ts = _wp("experiment"), "{{inputs.parameters.ts}}"
    folder = f"{exp}/{{{{inputs.parameters.slug}}}}/{ts}/{{{{inputs.parameters.study}}}}"

    # -- plan: check models and studies, expand the studies, fix the timestamp
    if st.kind == "s3":
        prep_out, prep_path = [Artifact(name="prepared", path="/out/prepared")], "/out/prepared"
    else:
        prep_out, prep_path = [], f"{DATA_MOUNT}/{exp}/prepared/{{{{workflow.name}}}}"
    plan = _container(
        "plan", "steps.plan",
        ["--experiment", exp, "--models", _wp("models"), "--studies", _wp("studies"), "--limit", _wp("limit"),
         "--gpus", _wp("gpus"), "--cpu", _wp("cpu"), "--memory", _wp("memory"), "--out", prep_path,
         "--params-dir", "/tmp/plan"],
        st, [], prep_out + [Parameter(name=k, value_from=m.ValueFrom(path=f"/tmp/plan/{k}"))
                            for k in ("models", "studies", "timestamp")],
        cpu="500m", mem="1Gi", deadline=1800)
    plan.volume_mounts = (plan.volume_mounts or []) + [m.VolumeMount(name="scratch", mount_path="/tmp/plan")]

    def prepared_input() -> tuple[list, str]:
        if st.kind == "s3":
            return [Artifact(name="prepared", path="/in/prepared")], "/in/prepared"
        return [Parameter(name="prepared-dir")], "{{inputs.parameters.prepared-dir}}"

    # -- serve: one model, no LoRA (vLLM-CPU's LoRA path breaks prompt log-probs, which scoring needs)
    serve = Container(
        name="serve", image=_wp("serve-image"), image_pull_policy="IfNotPresent", daemon=True,
        command=["python", "-m", "steps.serve"],
        args=["--model", "{{inputs.parameters.model}}", "--host", "0.0.0.0", "--port", str(serve_port),
              "--enable-lora", "false", "--tensor-parallel-size", "{{inputs.parameters.tp}}"],
        inputs=[Parameter(name=k) for k in ("model", "gpus", "tp", "cpu", "memory")],
        env=_model_env(),
        volume_mounts=[m.VolumeMount(name="models", mount_path=MODELS_MOUNT)],
        readiness_probe=m.Probe(http_get=m.HTTPGetAction(path="/health", port=serve_port),
                                initial_delay_seconds=20, period_seconds=5, timeout_seconds=5),
        resources=m.ResourceRequirements(
            requests={"cpu": "{{inputs.parameters.cpu}}", "memory": "{{inputs.parameters.memory}}"},
            limits={"cpu": "{{inputs.parameters.cpu}}", "memory": "{{inputs.parameters.memory}}",
                    "nvidia.com/gpu": "{{inputs.parameters.gpus}}"}),
        # placement per run without editing the workflow: selector and tolerations are parameters
        pod_spec_patch='{"nodeSelector": %s, "tolerations": %s}' % (_wp("node-selector"), _wp("tolerations")),
        security_context=SECURITY, active_deadline_seconds=12 * 3600,
        ports=[m.ContainerPort(name="http", container_port=serve_port)],
        labels={"app.kubernetes.io/component": "serve", "app.kubernetes.io/name": "vllm"},
        priority_class_name="kubellm-inference",
    )

    # -- the three per-study steps
    common = [Parameter(name=k) for k in ("model", "slug", "ts", "study", "url")]
    def model_calls(step: str, module: str, items: str, out: str, csv: str, metrics: dict[str, str],
                    models: bool = False) -> Container:
        """A step that sends one study's prepared rows to the served model and writes them as a CSV."""
        pin, ppath = prepared_input()
        outs, path = st.out(out, f"{folder}/{out}")
        return _container(
            step, module,
            ["--input", f"{ppath}/{{{{inputs.parameters.study}}}}/{items}", "--out", path,
             "--model", "{{inputs.parameters.model}}", "--url", "{{inputs.parameters.url}}",
             "--concurrency", _wp("concurrency"), "--max-failed-fraction", "1.0",
             "--csv-name", f"{{{{inputs.parameters.slug}}}}_{{{{inputs.parameters.study}}}}_{csv}.csv"],
            st, pin + common, outs, models=models, retry=True, metrics=metrics)

    query = model_calls("query", "steps.query", "prompts.jsonl", "raw", "raw_responses",
                        {"rows": "rows answered", "failed": "rows failed after retries"})
    probabilities = model_calls("probabilities", "steps.probabilities", "items.jsonl", "probabilities",
                                "probabilities", {"rows": "items scored", "failed": "items failed after retries"},
                                models=True)

    pin, ppath = prepared_input()
    raw_in, raw_read = st.inp("raw", f"{folder}/raw")
    ext_out, ext_path = st.out("structured", f"{folder}/structured")
    extract = _container(
        "extract", "steps.extract",
        ["--input", raw_read, "--schema", f"{ppath}/{{{{inputs.parameters.study}}}}/schema.json", "--out", ext_path,
         "--model", _wp("extractor"), "--url", _wp("extractor-url"),
         "--own-model", "{{inputs.parameters.model}}", "--own-url", "{{inputs.parameters.url}}",
         "--mode", _wp("extract-mode"), "--concurrency", _wp("concurrency"),
         "--csv-name", "{{inputs.parameters.slug}}_{{inputs.parameters.study}}_structured.csv"],
        st, pin + raw_in + common, ext_out,
        retry=True, env=[API_KEY], metrics={"rows": "rows extracted and valid", "failed": "rows that stayed invalid"})

    # -- collect: every model's folders -> published CSVs, experiment manifest, report
    if st.kind == "s3":
        root_in, root_read = [S3Artifact(name="root", path="/in/root", key=exp)], "/in/root"
        report_out = [S3Artifact(name="results", path="/out/results", key=exp, archive=NoneArchiveStrategy())]
        root_write, rep_path = "/out/results", f"/out/results/report/{{{{inputs.parameters.ts}}}}"
    else:
        root_in, root_read, report_out = [], f"{DATA_MOUNT}/{exp}", []
        root_write, rep_path = f"{DATA_MOUNT}/{exp}", f"{DATA_MOUNT}/{exp}/report/{{{{inputs.parameters.ts}}}}"
    pin, ppath = prepared_input()
    collect = _container(
        "collect", "steps.collect",
        ["--root", root_read, "--publish-root", root_write, "--prepared", ppath, "--experiment", exp,
         "--timestamp", "{{inputs.parameters.ts}}", "--models", "{{inputs.parameters.models}}",
         "--studies", "{{inputs.parameters.studies}}", "--out", rep_path],
        st, pin + root_in + [Parameter(name=k) for k in ("ts", "models", "studies")], report_out,
        cpu="1", mem="2Gi", metrics={"failed": "rows that failed in any step, all models"})

    served = "http://{{tasks.serve.ip}}:%d" % serve_port

    def prepared_arg(source: str) -> m.Artifact | Parameter:
        if st.kind == "s3":
            return m.Artifact(name="prepared", from_=source)
        return Parameter(name="prepared-dir", value=prep_path if source.startswith("{{tasks.plan") else
                         "{{inputs.parameters.prepared-dir}}")

    def pass_params(names: list[str]) -> list[Parameter]:
        return [Parameter(name=k, value="{{inputs.parameters.%s}}" % k) for k in names]

    with Workflow(
        **workflow_fields(name, PARAMS, values, st.kind),
    ) as wf:
        prepared_in = prepared_input()[0]
        study_inputs = prepared_in + [Parameter(name=k) for k in ("model", "slug", "ts", "study", "url")]
        with DAG(name="study", inputs=study_inputs) as study_dag:
            base = pass_params(["model", "slug", "ts", "study", "url"]) + [prepared_arg("{{inputs.artifacts.prepared}}")]
            t_q = Task(name="query", template=query, arguments=base)
            t_e = Task(name="extract", template=extract, depends="query", arguments=base)
            t_p = Task(name="probabilities", template=probabilities, arguments=base)
            del t_q, t_e, t_p
        model_inputs = prepared_input()[0] + [Parameter(name=k) for k in
                                              ("model", "slug", "ts", "studies", "gpus", "tp", "cpu", "memory")]
        with DAG(name="model", inputs=model_inputs) as model_dag:
            t_s = Task(name="serve", template=serve,
                       arguments=pass_params(["model", "gpus", "tp", "cpu", "memory"]))
            t_st = Task(name="study", template=study_dag, depends="serve", with_param="{{inputs.parameters.studies}}",
                        arguments=pass_params(["model", "slug", "ts"]) + [
                            Parameter(name="study", value="{{item}}"), Parameter(name="url", value=served),
                            prepared_arg("{{inputs.artifacts.prepared}}")])
            del t_s, t_st
        with DAG(name="main", parallelism=int(values["max-servers"])):
            t_plan = Task(name="plan", template=plan)
            out = "{{tasks.plan.outputs.parameters.%s}}"
            t_m = Task(name="model", template=model_dag, depends="plan", with_param=out % "models",
                       arguments=[Parameter(name="model", value="{{item.name}}"),
                                  Parameter(name="slug", value="{{item.slug}}"),
                                  Parameter(name="gpus", value="{{item.gpus}}"),
                                  Parameter(name="tp", value="{{item.tp}}"),
                                  Parameter(name="cpu", value="{{item.cpu}}"),
                                  Parameter(name="memory", value="{{item.memory}}"),
                                  Parameter(name="ts", value=out % "timestamp"),
                                  Parameter(name="studies", value=out % "studies"),
                                  prepared_arg("{{tasks.plan.outputs.artifacts.prepared}}")])
            t_c = Task(name="collect", template=collect, depends="model",
                       arguments=[Parameter(name="ts", value=out % "timestamp"),
                                  Parameter(name="models", value=out % "models"),
                                  Parameter(name="studies", value=out % "studies"),
                                  prepared_arg("{{tasks.plan.outputs.artifacts.prepared}}")])
            del t_plan, t_m, t_c
        for t in (plan, serve, query, extract, probabilities, collect):
            wf.templates.append(t) if t not in wf.templates else None
    return wf


def validate_params(params: dict[str, str]) -> dict[str, str]:
    """Fail before any work on a value that cannot work, saying how to fix it."""
    import json

    from steps.plan import parse_models, slug, study_path

    values = checked_values("experiment", PARAMS, params)
    for k in ("limit", "concurrency", "gpus", "max-servers"):
        try:
            n = int(values[k])
        except ValueError:
            raise ValueError(f"parameter {k}={values[k]!r} must be a whole number, e.g. -p {k}={PARAMS[k].default}") from None
        if n < 0 or (n == 0 and k in ("concurrency", "max-servers")):
            raise ValueError(f"parameter {k}={n} must be {'> 0' if k in ('concurrency', 'max-servers') else '>= 0'}")
    slug(values["experiment"])
    parse_models(values["models"], int(values["gpus"]), values["cpu"], values["memory"])
    for k, kind in (("node-selector", dict), ("tolerations", list)):
        try:
            ok = isinstance(json.loads(values[k]), kind)
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise ValueError(f"parameter {k}={values[k]!r} must be a JSON {kind.__name__}")
    for s in [x.strip() for x in values["studies"].split(",") if x.strip()]:
        study_path(s)
    if values["extractor-url"] and not values["extractor"]:
        raise ValueError("extractor-url is set but extractor is empty: name the model served there (-p extractor=NAME)")
    return values
