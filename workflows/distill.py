"""The distill pipeline as one Hera Workflow: the only definition of it.

    prepare-student ─┬─ serve (daemon: vLLM, base model + runtime LoRA) ─┐
    harvest ─────────┴──────────────────────────────── generate ────────┼─ baseline ───────────────────────┐
                                                                        └─ finetune ─ finetuned ─ judge ───┴─ evaluate
    rag=true:    harvest ─ index; baseline-rag, finetuned-rag (both students with retrieved chunks) ─ evaluate
    cycles=N:    finetuned ─ probe-2 ─ generate-2 ─ finetune-2 ─ finetuned-2 ─ probe-3 ... ─ evaluate

The teacher writes questions and grounded answers, and answers fact questions built from the
reference's structured facts, kept only when they state the fact (generate); the student answers the
held-out questions before (baseline) and after fine-tuning (finetuned); judge scores the fine-tuned
answers with RAGAS through structured outputs; evaluate writes the report, led by factual accuracy
on trained facts asked in new words. Compile-time: `-p rag=true` adds the index and both students
answering with retrieved chunks (fine-tune, retrieve, or both); `-p cycles=N` adds N-1 cycles, each
teaching the facts the previous student still gets wrong and training on the union.
By default the teacher is the student's own base model with the source document in its prompt
(context distillation), so one server start serves teacher, baseline and fine-tuned student.

    kubellm compile distill -o distill.yaml                  # artifacts through S3 (the default)
    kubellm compile distill --store pvc -o distill-pvc.yaml  # artifacts on the kubellm-data PVC
    kubellm run distill -p steps=20                          # this machine, no cluster
    kubellm run distill -p cycles=2 -p fact-questions=24     # a second cycle on what it got wrong
"""

from __future__ import annotations

from typing import Annotated

from hera.workflows import DAG, Container, NoneArchiveStrategy, Parameter, Task, Workflow
from hera.workflows import models as m
from pydantic import Field

from workflows.common import (DATA_MOUNT, URL_EXAMPLE, OptionalUrl, API_KEY, MODELS_MOUNT, SECURITY, SERVE_PORT, Param, Store, add_templates,
                              check_node, check_params, check_training, container_step, image_defaults, inp,
                              merge_params, pod_spec_patch, resources, vllm_server, workflow_fields, wp)

GEN, FT = "steps.generate:GenerateConfig", "steps.finetune:FinetuneConfig"
Count = Annotated[int, Field(ge=0)]

PARAMS: dict[str, Param] = {
    "student": Param("smollm2-135m", "student model: bundled name, hub ID (microsoft/phi-2) or folder"),
    "teacher": Param("smollm2-135m", "teacher: the served student name (context distillation), a model at "
                                     "teacher-url, or openai:MODEL (key from the kubellm-api-keys Secret)"),
    "teacher-url": Param("", "OpenAI-compatible base URL of the teacher; empty = the workflow's own server", OptionalUrl, example=URL_EXAMPLE),
    "topics": Param("all", "comma-separated topics (see `python -m steps.harvest --help`), or all"),
    "num-questions": Param("16", "training questions (one per knowledge-base document)", f"{GEN}.num_questions"),
    "heldout-unseen": Param("4", "held-out questions on documents never trained on", f"{GEN}.heldout_unseen"),
    "heldout-paraphrase": Param("4", "held-out rephrasings of training questions", f"{GEN}.heldout_paraphrase"),
    "fact-questions": Param("64", "training questions on facts the reference states exactly (type, required, "
                                  "default, minimum, maximum), kept only when the teacher's answer states the fact",
                            f"{GEN}.fact_questions"),
    "heldout-facts": Param("24", "held-out fact questions per split: trained fact in new words, unseen fact of a "
                                 "trained kind, fact of an unseen kind", f"{GEN}.heldout_facts"),
    "cycles": Param("1", "training cycles (compile-time): each cycle after the first asks the student the facts "
                         "it was taught in unused wordings plus new ones, and trains again on the union with the "
                         "teacher's answers to what it got wrong", Annotated[int, Field(ge=1, le=5)],
                    compile_time=True),
    "judge": Param("", "RAGAS judge of the fine-tuned answers: empty = the served model (flagged weak in the "
                       "report), a model at judge-url, or openai:MODEL (key from the kubellm-api-keys Secret)"),
    "judge-url": Param("", "OpenAI-compatible base URL of the judge", OptionalUrl, example=URL_EXAMPLE),
    "judge-rows": Param("1", "fine-tuned answers the judge scores with answer correctness and relevancy (0: all)",
                        "steps.judge:JudgeConfig.limit"),
    "steps": Param("60", "fine-tuning optimizer steps", f"{FT}.max_steps"),
    "method": Param("lora", "fine-tuning method (compile-time: full serves the merged model from a second "
                            "server; qlora needs GPUs)", f"{FT}.method", compile_time=True),
    "lora-r": Param("16", "LoRA rank (the server's --max-lora-rank follows it)", f"{FT}.r"),
    "learning-rate": Param("2e-4", "peak learning rate", f"{FT}.learning_rate"),
    "batch-size": Param("2", "micro-batch per training process, or auto: the largest the memory estimate fits "
                             "(steps.memory), keeping the global batch", f"{FT}.batch_size"),
    "grad-accum": Param("2", "gradient accumulation steps (global batch = batch-size x grad-accum x processes)",
                        f"{FT}.grad_accum"),
    "global-batch": Param("0", "rows per optimizer step over all processes with batch-size=auto (0: 2 x grad-accum "
                               "x processes)", f"{FT}.global_batch"),
    "nproc": Param("1", "training processes in the finetune pod (compile-time): torchrun ranks, one per GPU with "
                        "gpus, CPU processes with the gloo backend otherwise", f"{FT}.nproc", compile_time=True),
    "strategy": Param("ddp", "with several processes or nodes: ddp (a model copy per rank) or fsdp (sharded; GPUs)",
                      f"{FT}.strategy"),
    "nodes": Param("1", "nodes for fine-tuning (compile-time): above 1 the finetune node creates a Kubeflow Trainer "
                        "TrainJob of that many nodes x nproc ranks on the shared claim (--store pvc) and waits for it",
                   Annotated[int, Field(ge=1, le=64)], compile_time=True),
    "rag": Param("false", "also answer with retrieved chunks in the prompt (baseline + RAG, fine-tuned + RAG) "
                         "(compile-time: true adds the index and the two RAG answer nodes)", enum=("true", "false"),
                 compile_time=True),
    "top-k": Param("4", "chunks retrieved per question with rag", "steps.query:QueryConfig.top_k"),
    "answer-tokens": Param("80", "max tokens per answer (teacher and students)", f"{GEN}.max_tokens"),
    "concurrency": Param("16", "model requests in flight per step", f"{GEN}.concurrency"),
    "seed": Param("0", "seed for selection, sampling, training and bootstrap", f"{FT}.seed"),
    "gpus": Param("0", "GPUs for the serve and finetune nodes (compile-time: 0 or not decides the GPU "
                       "queue, CUDA images and GPU requests)", Count, compile_time=True),
    "steps-image": Param("ghcr.io/kubellm/steps-cpu:0.1.0", "image with the kubellm steps (steps-cuda when "
                         "compiled with gpus)"),
    "serve-image": Param("ghcr.io/kubellm/serve-cpu:0.1.0", "image with vLLM and the kubellm serve step "
                         "(serve, the CUDA build, when compiled with gpus)"),
}


# the images that must be CUDA builds when the run has GPUs
GPU_IMAGES = ("steps-image", "serve-image")


def build(store: str = "s3", params: dict[str, str] | None = None, serve_port: int = SERVE_PORT,
          name: str = "distill") -> Workflow:
    st = Store(store)
    params = image_defaults(params, GPU_IMAGES)
    values = merge_params("distill", PARAMS, params)
    gpus = wp("gpus") if int(values["gpus"]) > 0 else None
    full = values["method"] == "full"
    rag = values["rag"] == "true"
    cycles = int(values["cycles"])
    if int(values["nodes"]) > 1 and st.kind != "pvc":
        raise ValueError("nodes > 1 creates a Kubeflow TrainJob whose pods read the data and write checkpoints on "
                         "the shared kubellm-data claim: compile with --store pvc")

    check = check_node("distill", PARAMS, values)
    prepare = container_step("prepare-model", "steps.models", ["--name", inp("model"), "--out-param", "/tmp/model-path"],
                             st, [Parameter(name="model")],
                             [Parameter(name="model-path", value_from=m.ValueFrom(path="/tmp/model-path"))],
                             cpu="2", mem="6Gi", models=True, deadline=3 * 3600)

    gen_inputs = ";".join(f"{k}={wp(k)}" for k in (
        "steps-image", "teacher", "teacher-url", "student", "topics", "num-questions", "heldout-unseen",
        "heldout-paraphrase", "fact-questions", "heldout-facts", "answer-tokens", "seed"))
    ft_inputs = ";".join(f"{k}={wp(k)}" for k in (
        "method", "steps", "lora-r", "learning-rate", "batch-size", "grad-accum", "global-batch", "nproc", "strategy",
        "nodes"))
    memokeys = Container(
        name="memo-keys", image=wp("steps-image"), image_pull_policy="IfNotPresent",
        command=["python", "-m", "steps.memokey"],
        args=["--out-dir", "/tmp/keys", f"generate={gen_inputs}", f"finetune={ft_inputs}"],
        volume_mounts=[m.VolumeMount(name="scratch", mount_path="/tmp/keys")],
        outputs=[Parameter(name=k, value_from=m.ValueFrom(path=f"/tmp/keys/{k}")) for k in ("generate", "finetune")],
        resources=resources("100m", "256Mi"), security_context=SECURITY, active_deadline_seconds=600)

    kb_out, kb_path = st.out("harvest", "kb")
    harvest = container_step("harvest", "steps.harvest", ["--out", kb_path, "--topics", wp("topics")], st, [], kb_out,
                             cpu="1", mem="1Gi", deadline=3 * 3600)

    def queue_labels(priority: str) -> dict[str, str]:
        """Kueue's labels (k8s/queueing, applied with the gpu overlay): compiled with gpus, GPU work waits in
        the kubellm LocalQueue and is ordered by its WorkloadPriorityClass."""
        return {"kueue.x-k8s.io/queue-name": "kubellm", "kueue.x-k8s.io/priority-class": priority} if gpus else {}

    gpu_patch = pod_spec_patch(limits={"nvidia.com/gpu": gpus}) if gpus else None
    serve = vllm_server("serve", ["--model", inp("model"), "--served-name", inp("served-name"),
                                  "--max-lora-rank", wp("lora-r")],
                        [Parameter(name="model"), Parameter(name="served-name")], port=serve_port,
                        patch=gpu_patch, tolerations=bool(gpus), labels=queue_labels("kubellm-inference"))

    kb_in, kb_read = st.inp("kb")
    data_out, data_path = st.out("generate", "data")
    generate = container_step(
        "generate", "steps.generate",
        ["--kb", kb_read, "--out", data_path, "--teacher", wp("teacher"), "--url", wp("teacher-url"),
         "--served-url", inp("served-url"), "--topics", wp("topics"),
         "--num-questions", wp("num-questions"), "--heldout-unseen", wp("heldout-unseen"),
         "--heldout-paraphrase", wp("heldout-paraphrase"), "--fact-questions", wp("fact-questions"),
         "--heldout-facts", wp("heldout-facts"), "--max-tokens", wp("answer-tokens"),
         "--concurrency", wp("concurrency"), "--seed", wp("seed")],
        st, kb_in + [Parameter(name="served-url")], data_out, cpu="1", mem="2Gi", retry=True, env=[API_KEY],
        metrics=("rows", "failed"), memoize=True, deadline=3 * 3600)

    def answer(tname: str, lora: bool, with_rag: bool = False, adapter: str = "-ft",
               input_file: str = "heldout.jsonl") -> Container:
        d_in, d_read = st.inp("data")
        a_out, a_path = st.out(tname, "answers")
        args = ["--input", d_read, "--input-file", input_file, "--out", a_path, "--model", inp("model"),
                "--url", inp("url"), "--max-tokens", wp("answer-tokens"),
                "--concurrency", wp("concurrency"), "--seed", wp("seed"),
                # evaluate scores every held-out question: one missing answer fails the node
                "--max-failed-fraction", "0"]
        ins = d_in + [Parameter(name="model"), Parameter(name="url")]
        if with_rag:
            ix_in, ix_read = st.inp("index")
            ins += ix_in
            args += ["--rag", ix_read, "--top-k", wp("top-k")]
        if lora:
            ad_in, ad_read = st.inp("finetune")
            ins += ad_in
            args += ["--lora-name", "{{inputs.parameters.model}}" + adapter, "--lora-path", f"{ad_read}/adapter",
                     "--lora-stage-dir", f"{MODELS_MOUNT}/adapters/{{{{workflow.name}}}}"]
        return container_step(tname, "steps.query", args, st, ins, a_out, cpu="1", mem="1Gi", retry=True,
                              models=lora, metrics=("rows", "failed"), deadline=3 * 3600)

    # a LoRA/QLoRA adapter is loaded into the running server; a full fine-tune is a new model, served
    # by a second server from the merged folder, on the next port: both run until the DAG ends, and
    # the local runner's processes share one network
    baseline, finetuned = answer("answer-baseline", False), answer("answer-finetuned", not full)
    baseline_rag = answer("answer-baseline-rag", False, True)
    finetuned_rag = answer("answer-finetuned-rag", not full, True)
    kb_in2, kb_read2 = st.inp("kb")
    ix_out, ix_path = st.out("index", "index")
    index = container_step("index", "steps.index", ["--kb", kb_read2, "--out", ix_path], st, kb_in2, ix_out,
                           cpu="2", mem="3Gi", deadline=3 * 3600)

    nproc, nodes = int(values["nproc"]), int(values["nodes"])

    def finetune_step(tname: str, memoize: bool = False) -> Container:
        """The student's fine-tuning: `nproc` torchrun ranks in one pod (one process when 1)."""
        d_in, d_read = st.inp("data")
        out, path = st.out(tname, "finetune")
        args = ["--data", d_read, "--out", path, "--base-model", inp("model"),
                "--method", wp("method"), "--max-steps", wp("steps"), "--r", wp("lora-r"),
                "--learning-rate", wp("learning-rate"), "--batch-size", wp("batch-size"),
                "--grad-accum", wp("grad-accum"), "--global-batch", wp("global-batch"), "--nproc", wp("nproc"),
                "--strategy", wp("strategy"), "--seed", wp("seed")]
        if nodes > 1:
            # several nodes: a Kubeflow Trainer TrainJob (torch-distributed runtime) on the shared claim;
            # torchrun in each node pod starts nproc ranks (numProcPerNode), so --nproc is not passed
            from workflows.trainjob import as_overrides, trainjob_manifest, trainjob_step

            i = args.index("--nproc")
            manifest = trainjob_manifest(
                name="{{workflow.name}}-%s-" % tname, image=wp("steps-image"), module="steps.finetune",
                args=as_overrides(args[:i] + args[i + 2:]), nodes=nodes, nproc=nproc, cpu=str(max(2, nproc)),
                mem=f"{max(12, 6 * nproc)}Gi", gpus=gpus, claim="kubellm-data", mount_path=DATA_MOUNT, env=[],
                labels={"app.kubernetes.io/part-of": "kubellm", "kubellm/step": tname, **queue_labels("kubellm-training")},
                models_claim="kubellm-models", deadline=12 * 3600)
            return trainjob_step(tname, manifest, d_in + [Parameter(name="model")])
        # each rank holds a model copy (ddp) and one core's worth of threads at least
        return container_step(tname, "steps.finetune", args, st, d_in + [Parameter(name="model")], out,
                              cpu=str(max(2, nproc)), mem=f"{max(12, 6 * nproc)}Gi", gpus=gpus, models=True,
                              deadline=12 * 3600, metrics=("last_loss", "tokens_per_s", "mem_estimate_mb"),
                              ranks=nproc, memoize=memoize, retry_on="OnError",
                              labels=queue_labels("kubellm-training"))

    finetune = finetune_step("finetune", memoize=True)
    serve_ft = None
    if full:
        ft_in, ft_read = st.inp("finetune")
        serve_ft = vllm_server("serve-finetuned", ["--model", f"{ft_read}/merged", "--served-name", inp("served-name"),
                                                   "--enable-lora", "false"],
                               ft_in + [Parameter(name="served-name")], port=serve_port + 1, patch=gpu_patch,
                               tolerations=bool(gpus), mounts=st.mounts(), labels=queue_labels("kubellm-inference"))

    ja_in, ja_read = st.inp("finetuned")
    j_out, j_path = st.out("judge", "judge")
    judge = container_step("judge", "steps.judge",
                           ["--answers", f"{ja_read}/answers.jsonl", "--out", j_path, "--judge", wp("judge"),
                            "--judge-url", wp("judge-url"), "--served-model", inp("model"), "--served-url", inp("url"),
                            "--limit", wp("judge-rows"), "--metrics", "answer_correctness,answer_relevancy",
                            # RAGAS's replies for these metrics are short JSON; a cap bounds a rambling small judge
                            "--max-tokens", "256", "--seed", wp("seed")],
                           st, ja_in + [Parameter(name="url"), Parameter(name="model")], j_out, cpu="1",
                           mem="3Gi", retry=True, env=[API_KEY], deadline=3 * 3600)

    # cycles 2..N: probe the previous student, teach what it got wrong, train on the union, answer
    cyc: dict[int, dict[str, Container]] = {}
    for c in range(2, cycles + 1):
        prev_adapter = "-ft" if c == 2 else f"-ft{c - 1}"
        probe = answer(f"probe-{c}", True, adapter=prev_adapter, input_file="probe.jsonl")
        p_in, p_read = st.inputs("data", "probe")
        g_out, g_path = st.out(f"generate-{c}", "data")
        gen_c = container_step(
            f"generate-{c}", "steps.generate",
            ["--previous", p_read["data"], "--probe", p_read["probe"], "--cycle", str(c),
             "--out", g_path, "--teacher", wp("teacher"), "--url", wp("teacher-url"), "--served-url", inp("served-url"),
             "--fact-questions", wp("fact-questions"), "--max-tokens", wp("answer-tokens"),
             "--concurrency", wp("concurrency"), "--seed", wp("seed")],
            st, p_in + [Parameter(name="served-url")], g_out, cpu="1", mem="2Gi", retry=True, env=[API_KEY],
            metrics=("rows", "failed"), deadline=3 * 3600)
        ft_c = finetune_step(f"finetune-{c}")
        cyc[c] = {"probe": probe, "generate": gen_c, "finetune": ft_c,
                  "answer": answer(f"answer-finetuned-{c}", True, adapter=f"-ft{c}")}

    cycle_names = [n for c in range(2, cycles + 1) for n in (f"data-{c}", f"finetuned-{c}", f"finetune-{c}")]
    ins, reads = st.inputs("data", "baseline", "finetuned", "finetune", "kb", "judge",
                           *(("baseline-rag", "finetuned-rag") if rag else ()), *cycle_names)
    rep_out, rep_path = st.out("evaluate", "report")
    for a in rep_out:
        a.archive = NoneArchiveStrategy()  # stored as files: the Argo UI opens report.html directly
    evaluate = container_step(
        "evaluate", "steps.evaluate",
        ["--data", reads["data"], "--baseline", reads["baseline"], "--finetuned", reads["finetuned"],
         "--finetune", reads["finetune"], "--kb", reads["kb"], "--out", rep_path,
         "--judge", reads["judge"], "--teacher", inp("teacher"), "--student", wp("student"), "--seed", wp("seed")]
        + (["--baseline-rag", reads["baseline-rag"], "--finetuned-rag", reads["finetuned-rag"]] if rag else [])
        + (["--cycle-data", ",".join(reads[f"data-{c}"] for c in range(2, cycles + 1)),
            "--cycle-answers", ",".join(reads[f"finetuned-{c}"] for c in range(2, cycles + 1)),
            "--cycle-finetunes", ",".join(reads[f"finetune-{c}"] for c in range(2, cycles + 1))] if cycles > 1 else []),
        st, ins + [Parameter(name="teacher")], rep_out, cpu="2", mem="4Gi",
        metrics=("diff", "finetuned", "baseline", "fact_diff", "fact_finetuned", "fact_baseline"), deadline=3 * 3600)

    served_url = "http://{{tasks.serve.ip}}:%d" % serve_port
    with Workflow(
        **workflow_fields(name, PARAMS, values, st.kind),
        # compiled for GPUs (-p gpus=N at compile time): queue whole runs on the kubellm-semaphores
        # `gpu` key. Workflow level on purpose: serve keeps its GPU while finetune needs another.
        synchronization=m.Synchronization(semaphores=[m.SemaphoreRef(config_map_key_ref=m.ConfigMapKeySelector(
            name="kubellm-semaphores", key="gpu"))]) if gpus else None,
    ) as wf:
        with DAG(name="main"):
            t_check = Task(name="check-params", template=check)
            t_prep = Task(name="prepare-student", template=prepare,
                          arguments=[Parameter(name="model", value=wp("student"))])
            t_harvest = Task(name="harvest", template=harvest)
            t_keys = Task(name="memo-keys", template=memokeys)
            student_path = t_prep.get_parameter("model-path").value
            t_serve = Task(name="serve", template=serve,
                           arguments=[Parameter(name="model", value=student_path),
                                      Parameter(name="served-name", value=wp("student"))])
            t_gen = Task(name="generate", template=generate,
                         arguments=[st.arg("harvest", "kb"), Parameter(name="served-url", value=served_url),
                                    t_keys.get_parameter("generate").with_name("memo-key")])
            t_base = Task(name="answer-baseline", template=baseline,
                          arguments=[st.arg("generate", "data"), Parameter(name="model", value=wp("student")),
                                     Parameter(name="url", value=served_url)])
            t_ft = Task(name="finetune", template=finetune,
                        arguments=[st.arg("generate", "data"), Parameter(name="model", value=student_path)]
                        + ([t_keys.get_parameter("finetune").with_name("memo-key")] if nodes == 1 else []))
            ft_args = [st.arg("generate", "data"), Parameter(name="model", value=wp("student") + "-ft" if full
                                                             else wp("student"))]
            if full:
                t_sft = Task(name="serve-finetuned", template=serve_ft,
                             arguments=[st.arg("finetune", "finetune"),
                                        Parameter(name="served-name", value=wp("student") + "-ft")])
                ft_args.append(Parameter(name="url", value="http://{{tasks.serve-finetuned.ip}}:%d" % (serve_port + 1)))
            else:
                ft_args += [st.arg("finetune", "finetune"), Parameter(name="url", value=served_url)]
            t_fta = Task(name="answer-finetuned", template=finetuned, arguments=ft_args)
            eval_args = [st.arg("generate", "data"), st.arg("answer-baseline", "answers", "baseline"),
                         st.arg("answer-finetuned", "answers", "finetuned"),
                         st.arg("finetune", "finetune"), st.arg("harvest", "kb"),
                         Parameter(name="teacher", value=wp("teacher"))]
            if rag:
                t_index = Task(name="index", template=index, arguments=[st.arg("harvest", "kb")])
                t_brag = Task(name="answer-baseline-rag", template=baseline_rag,
                              arguments=[st.arg("generate", "data"), st.arg("index", "index"),
                                         Parameter(name="model", value=wp("student")),
                                         Parameter(name="url", value=served_url)])
                # loads the adapter itself (a no-op when answer-finetuned did): a retried run's new
                # server has none
                t_frag = Task(name="answer-finetuned-rag", template=finetuned_rag,
                              arguments=ft_args + [st.arg("index", "index")])
                eval_args += [st.arg("answer-baseline-rag", "answers", "baseline-rag"),
                              st.arg("answer-finetuned-rag", "answers", "finetuned-rag")]
            student = Parameter(name="model", value=wp("student"))
            t_judge = Task(name="judge", template=judge,
                           arguments=[st.arg("answer-finetuned", "answers", "finetuned"), student,
                                      Parameter(name="url", value=served_url)])
            eval_args.append(st.arg("judge", "judge"))
            prev_data, prev_ft, prev_answer, cycle_tasks = "generate", "finetune", t_fta, []
            for c, tpl in cyc.items():
                t_probe = Task(name=f"probe-{c}", template=tpl["probe"],
                               arguments=[st.arg(prev_data, "data"), st.arg(prev_ft, "finetune"), student,
                                          Parameter(name="url", value=served_url)])
                t_genc = Task(name=f"generate-{c}", template=tpl["generate"],
                              arguments=[st.arg(prev_data, "data"), st.arg(f"probe-{c}", "answers", "probe"),
                                         Parameter(name="served-url", value=served_url)])
                t_ftc = Task(name=f"finetune-{c}", template=tpl["finetune"],
                             arguments=[st.arg(f"generate-{c}", "data"), Parameter(name="model", value=student_path)])
                t_ansc = Task(name=f"answer-finetuned-{c}", template=tpl["answer"],
                              arguments=[st.arg(f"generate-{c}", "data"), st.arg(f"finetune-{c}", "finetune"), student,
                                         Parameter(name="url", value=served_url)])
                # one student at a time on the server: the probe waits for the previous answers
                prev_answer >> t_probe >> t_genc >> t_ftc >> t_ansc
                eval_args += [st.arg(f"generate-{c}", "data", f"data-{c}"),
                              st.arg(f"answer-finetuned-{c}", "answers", f"finetuned-{c}"),
                              st.arg(f"finetune-{c}", "finetune", f"finetune-{c}")]
                prev_data, prev_ft, prev_answer = f"generate-{c}", f"finetune-{c}", t_ansc
                cycle_tasks.append(t_ansc)
            t_eval = Task(name="evaluate", template=evaluate, arguments=eval_args)
            t_fta >> t_judge >> t_eval
            for t in cycle_tasks:
                t >> t_eval
            t_check >> [t_prep, t_harvest, t_keys]
            t_prep >> t_serve
            [t_harvest, t_serve, t_keys] >> t_gen >> [t_base, t_ft]
            if full:
                [t_ft, t_base] >> t_sft >> t_fta
            else:
                [t_ft, t_base] >> t_fta
            t_fta >> t_eval
            if rag:
                t_harvest >> t_index
                [t_index, t_base] >> t_brag >> t_eval
                [t_index, t_fta] >> t_frag >> t_eval
        add_templates(wf, [check, memokeys, prepare, harvest, serve, generate, baseline, finetuned, finetune]
                      + ([serve_ft] if full else []) + ([index, baseline_rag, finetuned_rag] if rag else [])
                      + [judge] + [t for c in cyc.values() for t in c.values()] + [evaluate])
    return wf


def check_distributed(values: dict[str, str]) -> None:
    """How the fine-tune's ranks, batch and strategy fit together, refused up front."""
    nproc, nodes, gpus = int(values["nproc"]), int(values["nodes"]), int(values["gpus"])
    ranks = nproc * nodes
    if gpus and nproc > gpus:
        raise ValueError(f"nproc={nproc} but the finetune pod gets gpus={gpus}: one process per GPU, so set "
                         f"-p nproc={gpus} or -p gpus={nproc}")
    if values["strategy"] == "fsdp" and (not gpus or ranks < 2):
        raise ValueError("strategy=fsdp shards the model across GPUs: it needs -p gpus=N and nproc x nodes above 1; "
                         "use strategy=ddp on CPU")
    g = int(values["global-batch"])
    if values["batch-size"] == "auto":
        if g and g % ranks:
            raise ValueError(f"global-batch={g} must be a multiple of the {ranks} training processes "
                             f"(nproc x nodes), e.g. -p global-batch={ranks * max(1, g // ranks)}")
    elif g and g != int(values["batch-size"]) * int(values["grad-accum"]) * ranks:
        raise ValueError(f"global-batch={g} is only used with batch-size=auto; with batch-size="
                         f"{values['batch-size']} the global batch is batch-size x grad-accum x processes = "
                         f"{int(values['batch-size']) * int(values['grad-accum']) * ranks}: leave global-batch at 0")
    if values["method"] == "qlora" and ranks > 1 and values["strategy"] == "fsdp":
        raise ValueError("method=qlora with strategy=fsdp is not supported here: use strategy=ddp")


def validate_params(params: dict[str, str], files: bool = True) -> dict[str, str]:
    """Fail before any work on a value that cannot work, saying how to fix it. `files`: also check
    what lives on this machine (not from the check node of a cluster run)."""
    from steps.harvest import validate_topics

    values = check_params("distill", PARAMS, image_defaults(params, GPU_IMAGES))
    if int(values["heldout-paraphrase"]) > int(values["num-questions"]):
        raise ValueError("heldout-paraphrase cannot exceed num-questions (it rephrases training questions)")
    check_training(values, "student", GPU_IMAGES, files)
    t = values["teacher"]
    if not t.startswith("openai:") and not values["teacher-url"] and t != values["student"]:
        raise ValueError(f"teacher {t!r} is not served by this workflow (it serves the student "
                         f"{values['student']!r}): set -p teacher={values['student']} for context distillation, "
                         "-p teacher-url=URL for a teacher served elsewhere, or -p teacher=openai:MODEL")
    if int(values["answer-tokens"]) < 32:
        raise ValueError(f"answer-tokens={values['answer-tokens']} leaves a teacher no room to finish an answer: answers "
                         "cut at the limit are not trained on (they teach a student to run on), so use 32 or more")
    if values["judge"] and not values["judge"].startswith("openai:") and not values["judge-url"]:
        raise ValueError(f"judge {values['judge']!r} needs -p judge-url=URL (the server that serves it), or use "
                         "openai:MODEL, or leave judge empty to let the served student judge")
    if int(values["cycles"]) > 1 and values["method"] == "full":
        raise ValueError("cycles > 1 needs method lora or qlora: each cycle's student is an adapter loaded into "
                         "the one server (a full fine-tune would need a server per cycle)")
    if int(values["cycles"]) > 1 and (int(values["fact-questions"]) == 0 or int(values["heldout-facts"]) == 0):
        raise ValueError("cycles > 1 needs fact-questions > 0 and heldout-facts > 0: later cycles teach the facts "
                         "the student gets wrong and are measured on the held-out facts")
    check_distributed(values)
    topics = [x.strip() for x in values["topics"].split(",") if x.strip()]
    validate_topics(topics)
    # the sizes the topics can fill: reads the installed reference (a few seconds; the steps image has it,
    # so a cluster's check node refuses them too)
    from steps.generate import check_plan

    try:
        check_plan(topics, num_questions=int(values["num-questions"]), heldout_unseen=int(values["heldout-unseen"]),
                   heldout_paraphrase=int(values["heldout-paraphrase"]), fact_questions=int(values["fact-questions"]),
                   heldout_facts=int(values["heldout-facts"]), seed=int(values["seed"]))
    except FileNotFoundError:
        pass  # no reference installed here: the generate node checks the same on its knowledge base
    return values
