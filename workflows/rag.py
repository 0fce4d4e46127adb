"""The rag pipeline as one Hera Workflow: harvest -> index -> serve -> answer -> evaluate.

    harvest ─┬─ index ─┬─ retrieval-eval ──────────────────────────────┐
             └─ facts ─┘                                                │
    prepare-model ─ serve (daemon: vLLM) ─┬─ answer-closed ─────────────┼─ evaluate
                                          └─ answer-rag ─ judge ────────┘

harvest reads the knowledge base (`sources`: the v1.28 reference, and on a cluster the live cluster
through the kubellm-harvest ServiceAccount); index chunks and embeds it (steps.index); facts writes
questions with exact answers from the reference (steps.facts); retrieval-eval measures recall@k and
MRR of hybrid, dense and BM25 retrieval on them; the served model answers each question closed-book
and with the top-k chunks in its prompt (steps.query --rag); judge scores the RAG answers with RAGAS
faithfulness and context precision (steps.judge; by default the served model itself, which the
report flags as weak); evaluate writes the report (steps.rag_evaluate).

`cron()` is the CronWorkflow that keeps an index of the live cluster current: harvest (cluster and
reference) -> index, incremental against the previous index at a fixed key, on a schedule.

    kubellm run rag                                  # this machine: reference only, bundled model
    kubellm compile rag -o rag.yaml; argo submit rag.yaml -p sources=k8s-api,cluster -p judge=openai:gpt-4o-mini
    kubellm compile rag-refresh -o rag-refresh.yaml  # the CronWorkflow; kubectl apply -f it
"""

from __future__ import annotations

from pathlib import Path

from hera.workflows import DAG, CronWorkflow, NoneArchiveStrategy, Parameter, Task, Workflow
from hera.workflows import models as m

from workflows.common import (API_KEY, URL_EXAMPLE, OptionalUrl, Param, Store, add_templates, check_node,
                              check_images, check_params, container_step, image_defaults, inp, merge_params,
                              pod_spec_patch, vllm_server, workflow_fields, wp)

Q, F, J = "steps.query:QueryConfig", "steps.facts:FactsConfig", "steps.judge:JudgeConfig"
SOURCES = ("k8s-api", "cluster", "dump")
HARVEST_SA = "kubellm-harvest"  # k8s/rag/rbac.yaml: read-only ClusterRole, never Secrets

PARAMS: dict[str, Param] = {
    "sources": Param("k8s-api", "comma-separated harvest sources: k8s-api (the v1.28 reference, needed for the "
                                "evaluation's questions), cluster (the live cluster), dump (dump-dir)"),
    "topics": Param("all", "comma-separated reference topics (see `python -m steps.harvest --help`), or all"),
    "namespaces": Param("all", "source cluster: comma-separated namespaces to read, or all"),
    "dump-dir": Param("", "source dump: folder of `kubectl get -o json` files and logs on the data claim"),
    "model": Param("smollm2-135m", "model that answers: bundled name, hub ID, folder, or auto (the largest "
                                   "registry model whose weights and KV cache fit the hardware: the choose-model "
                                   "node reads the cluster's nodes, or this machine)"),
    "questions": Param("200", "fact questions asked (sampled from the reference's facts; 0: all)",
                       f"{F}.max_questions"),
    "top-k": Param("4", "chunks retrieved per question", f"{Q}.top_k"),
    "retriever": Param("hybrid", "hybrid (rank fusion of dense and BM25), dense or bm25", f"{Q}.rag_method"),
    "answer-tokens": Param("48", "max tokens per answer", f"{Q}.max_tokens"),
    "judge": Param("", "RAGAS judge: empty = the served model (flagged weak in the report), a model at "
                       "judge-url, or openai:MODEL (key from the kubellm-api-keys Secret)"),
    "judge-url": Param("", "OpenAI-compatible base URL of the judge", OptionalUrl, example=URL_EXAMPLE),
    "judge-rows": Param("8", "RAG answers the judge scores (0: all of them; the bundled judge takes about 30 s "
                             "per answer here)", f"{J}.limit"),
    "concurrency": Param("16", "model requests in flight per step", f"{Q}.concurrency"),
    "seed": Param("0", "seed for sampling and bootstrap", f"{F}.seed"),
    "steps-image": Param("ghcr.io/kubellm/steps-cpu:0.1.0", "image with the kubellm steps"),
    "serve-image": Param("ghcr.io/kubellm/serve-cpu:0.1.0", "image with vLLM and the kubellm serve step"),
    "gpus": Param("0", "GPUs for the serve node (compile-time)", int, compile_time=True),
}
GPU_IMAGES = ("steps-image", "serve-image")


def _harvest(st: Store, out_name: str = "kb", previous: bool = False):
    kb_out, kb_path = st.out("harvest", out_name)
    args = ["--out", kb_path, "--sources", "[%s]" % wp("sources"), "--topics", wp("topics"),
            "--namespaces", "[%s]" % wp("namespaces"), "--dump-dir", wp("dump-dir")]
    ins = []
    if previous:
        ins, prev = st.keyed_inp("previous-kb", "rag/current/kb")
        for a in ins:
            a.optional = True  # the first run has no previous harvest
        args += ["--previous", prev]
    t = container_step("harvest", "steps.harvest", args, st, ins, kb_out, cpu="1", mem="1Gi", retry=True,
                       deadline=3 * 3600)
    t.service_account_name = HARVEST_SA  # reads the cluster (lightkube, in-cluster config); no Secrets
    return t


def build(store: str = "s3", params: dict[str, str] | None = None, serve_port: int = 8000,
          name: str = "rag") -> Workflow:
    st = Store(store)
    params = image_defaults(params, GPU_IMAGES)
    values = merge_params("rag", PARAMS, params)
    gpus = wp("gpus") if int(values["gpus"]) > 0 else None

    check = check_node("rag", PARAMS, values)
    # the detect node at the head: model=auto becomes the largest model that fits (steps.choose, the
    # cluster's nodes through the harvest ServiceAccount's read of nodes); any other value passes through
    choose = container_step("choose-model", "steps.choose",
                            ["--pick", wp("model"), "--role", "served", "--hardware", "auto", "--context", "2048",
                             "--concurrency", wp("concurrency"), "--out-param", "/tmp/model"],
                            st, [], [Parameter(name="model", value_from=m.ValueFrom(path="/tmp/model"))],
                            cpu="200m", mem="512Mi", retry=True, deadline=600)
    choose.service_account_name = HARVEST_SA
    prepare = container_step("prepare-model", "steps.models", ["--name", inp("model"), "--out-param", "/tmp/model-path"],
                             st, [Parameter(name="model")],
                             [Parameter(name="model-path", value_from=m.ValueFrom(path="/tmp/model-path"))],
                             cpu="2", mem="6Gi", models=True, deadline=3 * 3600)
    harvest = _harvest(st)

    kb_in, kb_read = st.inp("kb")
    ix_out, ix_path = st.out("index", "index")
    index = container_step("index", "steps.index", ["--kb", kb_read, "--out", ix_path], st, kb_in, ix_out,
                           cpu="2", mem="3Gi", deadline=3 * 3600)
    kb_in, kb_read = st.inp("kb")
    f_out, f_path = st.out("facts", "facts")
    facts = container_step("facts", "steps.facts", ["--kb", kb_read, "--out", f_path, "--max-questions",
                                                    wp("questions"), "--seed", wp("seed")],
                           st, kb_in, f_out, cpu="1", mem="1Gi", deadline=3600)
    ins, reads = st.inputs("index", "facts")
    r_out, r_path = st.out("retrieval-eval", "retrieval")
    retrieval = container_step("retrieval-eval", "steps.retrieval_eval",
                               ["--index", reads["index"], "--questions", f"{reads['facts']}/questions.jsonl",
                                "--out", r_path, "--seed", wp("seed")], st, ins, r_out, cpu="2", mem="3Gi",
                               deadline=3600)

    gpu_patch = pod_spec_patch(limits={"nvidia.com/gpu": gpus}) if gpus else None
    serve = vllm_server("serve", ["--model", inp("model"), "--served-name", inp("served-name"), "--enable-lora", "false"],
                        [Parameter(name="model"), Parameter(name="served-name")], port=serve_port,
                        patch=gpu_patch, tolerations=bool(gpus))

    def answer(tname: str, with_rag: bool):
        ins, reads = st.inputs("facts", *(("index",) if with_rag else ()))
        a_out, a_path = st.out(tname, "answers")
        args = ["--input", f"{reads['facts']}/questions.jsonl", "--out", a_path, "--model", inp("model"),
                "--url", inp("url"), "--max-tokens", wp("answer-tokens"), "--concurrency", wp("concurrency"),
                "--seed", wp("seed"), "--max-failed-fraction", "0"]
        if with_rag:
            args += ["--rag", reads["index"], "--top-k", wp("top-k"), "--rag-method", wp("retriever")]
        return container_step(tname, "steps.query", args, st, ins + [Parameter(name="url"), Parameter(name="model")],
                              a_out, cpu="1",
                              mem="2Gi", retry=True, metrics=("rows", "failed"), deadline=3 * 3600)

    closed, rag = answer("answer-closed", False), answer("answer-rag", True)

    a_in, a_read = st.inp("rag")
    j_out, j_path = st.out("judge", "judge")
    judge = container_step("judge", "steps.judge",
                           ["--answers", f"{a_read}/answers.jsonl", "--out", j_path, "--judge", wp("judge"),
                            "--judge-url", wp("judge-url"), "--served-model", inp("model"), "--served-url", inp("url"),
                            "--limit", wp("judge-rows"), "--seed", wp("seed")],
                           st, a_in + [Parameter(name="url"), Parameter(name="model")], j_out, cpu="1",
                           mem="3Gi", retry=True, env=[API_KEY], deadline=3 * 3600)

    ins, reads = st.inputs("facts", "closed", "rag", "retrieval", "judge")
    rep_out, rep_path = st.out("evaluate", "report")
    for a in rep_out:
        a.archive = NoneArchiveStrategy()  # stored as files: the Argo UI opens report.html directly
    evaluate = container_step("evaluate", "steps.rag_evaluate",
                              ["--questions", reads["facts"], "--closed", reads["closed"], "--rag", reads["rag"],
                               "--retrieval", reads["retrieval"], "--judge", reads["judge"], "--out", rep_path,
                               "--seed", wp("seed")],
                              st, ins, rep_out, cpu="1", mem="1Gi",
                              metrics=("rag_accuracy", "closed_accuracy", "rag_diff"), deadline=3600)

    served_url = "http://{{tasks.serve.ip}}:%d" % serve_port
    with Workflow(**workflow_fields(name, PARAMS, values, st.kind)) as wf:
        with DAG(name="main"):
            t_check = Task(name="check-params", template=check)
            t_choose = Task(name="choose-model", template=choose)
            model = t_choose.get_parameter("model").value
            t_prep = Task(name="prepare-model", template=prepare, arguments=[Parameter(name="model", value=model)])
            t_harvest = Task(name="harvest", template=harvest)
            t_index = Task(name="index", template=index, arguments=[st.arg("harvest", "kb")])
            t_facts = Task(name="facts", template=facts, arguments=[st.arg("harvest", "kb")])
            t_ret = Task(name="retrieval-eval", template=retrieval,
                         arguments=[st.arg("index", "index"), st.arg("facts", "facts")])
            t_serve = Task(name="serve", template=serve,
                           arguments=[Parameter(name="model", value=t_prep.get_parameter("model-path").value),
                                      Parameter(name="served-name", value=model)])
            url = [Parameter(name="url", value=served_url), Parameter(name="model", value=model)]
            t_closed = Task(name="answer-closed", template=closed, arguments=[st.arg("facts", "facts"), *url])
            t_rag = Task(name="answer-rag", template=rag,
                         arguments=[st.arg("facts", "facts"), st.arg("index", "index"), *url])
            # no judge given: the served model judges (the report says how weak it is)
            t_judge = Task(name="judge", template=judge, arguments=[st.arg("answer-rag", "answers", "rag"), *url])
            t_eval = Task(name="evaluate", template=evaluate,
                          arguments=[st.arg("facts", "facts"), st.arg("answer-closed", "answers", "closed"),
                                     st.arg("answer-rag", "answers", "rag"), st.arg("retrieval-eval", "retrieval"),
                                     st.arg("judge", "judge")])
            t_check >> [t_choose, t_harvest]
            t_choose >> t_prep
            t_harvest >> [t_index, t_facts]
            [t_index, t_facts] >> t_ret
            t_prep >> t_serve
            [t_serve, t_facts] >> t_closed
            [t_serve, t_index, t_facts] >> t_rag >> t_judge
            [t_closed, t_judge, t_ret] >> t_eval
        add_templates(wf, [check, choose, prepare, harvest, index, facts, retrieval, serve, closed, rag, judge, evaluate])
    return wf


REFRESH_PARAMS = {k: PARAMS[k] for k in ("sources", "topics", "namespaces", "dump-dir", "steps-image")}
REFRESH_PARAMS["sources"] = Param("k8s-api,cluster", PARAMS["sources"].help)


def cron(store: str = "s3", params: dict[str, str] | None = None, schedule: str = "0 */6 * * *",
         name: str = "rag-refresh") -> CronWorkflow:
    """The CronWorkflow that keeps the index of the live cluster current at the fixed key
    rag/current/index (what `kubellm ask --index` and a RAG service read): harvest the cluster and
    the reference, then index incrementally against the previous index there (unchanged documents
    keep their vectors). One run at a time; a run still going when the next is due makes it skip."""
    st = Store(store)
    values = merge_params("rag-refresh", REFRESH_PARAMS, params)
    harvest = _harvest(st)
    kb_in, kb_read = st.inp("kb")
    prev_in, prev_read = st.keyed_inp("previous", "rag/current/index")
    for a in prev_in:
        a.optional = True  # the first run has no previous index
    ix_out, ix_path = st.keyed_out("index", "rag/current/index")
    index = container_step("index", "steps.index", ["--kb", kb_read, "--out", ix_path, "--previous", prev_read,
                                                    "--previous-missing-ok", "true"],
                           st, kb_in + prev_in, ix_out, cpu="2", mem="3Gi", deadline=3 * 3600)
    fields = workflow_fields(name, REFRESH_PARAMS, values, st.kind)
    fields.pop("generate_name")
    with CronWorkflow(name=name, schedules=[schedule], concurrency_policy="Forbid", starting_deadline_seconds=600,
                      successful_jobs_history_limit=3, failed_jobs_history_limit=3, **fields) as wf:
        with DAG(name="main"):
            t_harvest = Task(name="harvest", template=harvest)
            t_index = Task(name="index", template=index, arguments=[st.arg("harvest", "kb")])
            t_harvest >> t_index
        add_templates(wf, [harvest, index])
    return wf


def validate_params(params: dict[str, str], files: bool = True) -> dict[str, str]:
    """Fail before any work on a value that cannot work, saying how to fix it."""
    from steps.harvest import validate_topics

    values = check_params("rag", PARAMS, image_defaults(params, GPU_IMAGES))
    sources = [s.strip() for s in values["sources"].split(",") if s.strip()]
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        raise ValueError(f"parameter sources={values['sources']!r}: {bad or 'empty'}; give a comma-separated "
                         f"list of {', '.join(SOURCES)}, e.g. -p sources=k8s-api,cluster")
    if "k8s-api" not in sources:
        raise ValueError("parameter sources must include k8s-api: the evaluation asks questions whose exact "
                         "answers come from the v1.28 reference; e.g. -p sources=k8s-api,cluster")
    if "dump" in sources and not values["dump-dir"]:
        raise ValueError("sources includes dump but dump-dir is empty; set -p dump-dir=/data/cluster-dump")
    if values["judge"] and not values["judge"].startswith("openai:") and not values["judge-url"]:
        raise ValueError(f"judge {values['judge']!r} needs -p judge-url=URL (the server that serves it), or use "
                         "openai:MODEL, or leave judge empty to let the served model judge")
    check_images(values, int(values["gpus"]) > 0, GPU_IMAGES)
    if files and values["model"] != "auto":
        from steps import models

        try:
            models.check_name(values["model"])
        except models.UnknownModel as e:
            raise ValueError(f"parameter model: {e}") from None
    validate_topics([x.strip() for x in values["topics"].split(",") if x.strip()])
    return values


def check_local_run(params: dict[str, str]) -> None:
    """What `kubellm run rag` (this machine, not a cluster) needs besides valid parameters: the
    harvest node reads the cluster through this machine's kubeconfig, and a dump from a local folder."""
    values = merge_params("rag", PARAMS, params)
    sources = [x.strip() for x in values["sources"].split(",")]
    if "cluster" in sources:
        try:
            from steps.detect import kube_config

            kube_config(None, None)
        except ImportError:
            raise ValueError("sources includes cluster, which needs lightkube: pip install 'kubellm[cluster]'") from None
        except ValueError as e:
            raise ValueError(f"sources includes cluster, but {e}") from None
    if "dump" in sources and values["dump-dir"] and not Path(values["dump-dir"]).is_dir():
        raise ValueError(f"dump-dir {values['dump-dir']!r} is not a folder on this machine; give the folder of "
                         "`kubectl get -o json` files and logs")
