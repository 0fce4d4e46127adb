"""The nli pipeline as one Hera Workflow: train, evaluate, publish and deploy an NLI model.

    prepare-model ──────────────┐
    nli-data ─── finetune ───── evaluate ── publish ── deploy-config ── deploy ── smoke

nli-data builds Kubernetes-NLI pairs from the v1.28 reference (or reads MultiNLI-format data),
finetune trains the text-to-text model on the train split (LoRA by default), evaluate scores the
zero-shot and fine-tuned models on the test split, publish copies the model to the kubellm-models
claim as version `<workflow name>`, and two Argo resource templates roll it out: deploy-config
applies the service's settings (ConfigMap kubellm-nli-config), deploy applies the Deployment
kubellm-nli pointing at the new version and waits for the rollout. smoke then calls the Service.

    kubellm compile nli -o nli.yaml       # then: kubectl apply -k k8s/nli; argo submit nli.yaml
    kubellm run nli                       # this machine: the service keeps running at the end

Locally the runner emulates the two resource templates (docs/runner.md, "Resource templates").
"""

from __future__ import annotations

from typing import Annotated

import yaml
from hera.workflows import DAG, NoneArchiveStrategy, Parameter, Resource, Task, Workflow
from hera.workflows import models as m
from pydantic import Field

from workflows.common import (MODELS_MOUNT, Param, Store, add_templates, check_node, check_params, check_training,
                              container_step, image_defaults, inp, merge_params, workflow_fields, wp)

DATA, FT, EV, SVC = ("steps.nli_data:NliDataConfig", "steps.nli_train:NliTrainConfig",
                     "steps.nli_evaluate:NliEvaluateConfig", "steps.nli_service:NliServiceConfig")
Count = Annotated[int, Field(ge=0)]
Url = Annotated[str, Field(pattern=r"^https?://\S+$")]
SERVICE = "kubellm-nli"  # the Deployment, its Service and (with -config) its ConfigMap: k8s/nli
SERVICE_PORT = 8080
REPLICAS = 2  # the HorizontalPodAutoscaler's minimum (k8s/nli)

PARAMS: dict[str, Param] = {
    "dataset": Param("k8s-reference", "training data: k8s-reference (pairs built from the Kubernetes v1.28 "
                                      "reference), a MultiNLI-format JSONL file or folder, or a hub ID "
                                      "(nyu-mll/multi_nli)", f"{DATA}.dataset"),
    "model": Param("smollm2-135m", "base model: bundled name, folder or hub ID (google/flan-t5-small: "
                                   "seq2seq)"),
    "max-pairs": Param("3000", "NLI pairs in all splits together", f"{DATA}.max_pairs"),
    "steps": Param("300", "fine-tuning optimizer steps", f"{FT}.max_steps"),
    "method": Param("lora", "fine-tuning method (compile-time: lora and qlora publish the adapter, full the "
                            "whole model; qlora needs GPUs)", f"{FT}.method", compile_time=True),
    "lora-r": Param("16", "LoRA rank", f"{FT}.r"),
    "lora-layers": Param("0", "adapt only the top N layers (0: all; a seq2seq model: N of the encoder and of "
                              "the decoder): the backward pass stops below them", f"{FT}.lora_layers"),
    "learning-rate": Param("1e-3", "peak learning rate", f"{FT}.learning_rate"),
    "batch-size": Param("12", "pairs per optimizer step (a causal model reads a premise once for all its pairs "
                              "in the step)", f"{FT}.batch_size"),
    "max-length": Param("1024", "longest training row in tokens (causal: a premise and its pairs, packed; "
                                "seq2seq: the pair and the label each, capped at 512)", f"{FT}.max_length"),
    "eval-limit": Param("0", "score only the first N test pairs (0: all)", f"{EV}.limit"),
    "seed": Param("0", "seed for data, training and bootstrap", f"{DATA}.seed"),
    "max-batch-size": Param("16", "service: pairs scored together in one forward pass (1: no micro-batching)",
                            f"{SVC}.max_batch_size"),
    "max-wait-ms": Param("10", "service: how long the first queued pair waits for others", f"{SVC}.max_wait_ms"),
    "service-url": Param(f"http://{SERVICE}", "the Service the smoke node calls (locally: the emulated "
                                              "Deployment of that name)", Url, example=f"http://{SERVICE}"),
    "gpus": Param("0", "GPUs for the finetune node (compile-time: 0 or not decides the GPU queue, the CUDA "
                       "image and GPU requests)", Count, compile_time=True),
    "steps-image": Param("ghcr.io/kubellm/steps-cpu:0.1.0", "image with the kubellm steps; the service runs "
                         "from it too"),
}

GPU_IMAGES = ("steps-image",)
MODEL_ROOT = f"{MODELS_MOUNT}/nli"  # published versions on the kubellm-models claim


def service_config(max_batch_size: str, max_wait_ms: str) -> str:
    """The service's settings file (steps.nli_service --config), as k8s/nli/nli-config.yaml holds it."""
    return (f"max_batch_size: {max_batch_size}\nmax_wait_ms: {max_wait_ms}\nmax_text_chars: 2000\n"
            "max_batch_items: 64\nmax_body_bytes: 1048576\n")


def config_map(max_batch_size: str, max_wait_ms: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{SERVICE}-config", "labels": {"app.kubernetes.io/name": SERVICE,
                                                                 "app.kubernetes.io/part-of": "kubellm"}},
            "data": {"nli.yaml": service_config(max_batch_size, max_wait_ms)}}


def deployment(version: str, image: str, port: int = SERVICE_PORT) -> dict:
    """The kubellm-nli Deployment serving model `version` (a folder under /models/nli on the claim).
    k8s/nli/nli-service.yaml holds the same object for version `current` (a test keeps them equal)."""
    labels = {"app.kubernetes.io/name": SERVICE, "app.kubernetes.io/component": "nli-service"}
    probe = lambda path, **kw: {"httpGet": {"path": path, "port": "http"}, **kw}  # noqa: E731
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": SERVICE, "labels": labels | {"app.kubernetes.io/part-of": "kubellm"},
                     "annotations": {"checkov.io/skip1": "CKV_K8S_43=pinned by release tag, digest added at "
                                                         "deploy time"}},
        "spec": {
            "replicas": REPLICAS, "revisionHistoryLimit": 5,
            # a new model version never drops capacity
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "selector": {"matchLabels": {"app.kubernetes.io/name": SERVICE}},
            "template": {
                "metadata": {"labels": labels, "annotations": {"kubellm.io/model-version": version}},
                "spec": {
                    "automountServiceAccountToken": False, "priorityClassName": "kubellm-inference",
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 1000,
                                        "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "nli", "image": image, "imagePullPolicy": "Always",
                        "command": ["python", "-m", "steps.nli_service"],
                        "args": ["--config", "/etc/kubellm/nli.yaml", "--model", f"{MODEL_ROOT}/{version}",
                                 "--host", "0.0.0.0", "--port", str(port)],
                        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "HOME", "value": "/tmp"},
                                {"name": "KUBELLM_CACHE", "value": "/tmp/kubellm"}],
                        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
                        # ready only once the model is loaded; alive as long as the process answers
                        "readinessProbe": probe("/readyz", periodSeconds=5, failureThreshold=3),
                        "livenessProbe": probe("/livez", initialDelaySeconds=10, periodSeconds=20, failureThreshold=3),
                        "startupProbe": probe("/livez", periodSeconds=5, failureThreshold=60),
                        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True},
                                         {"name": "config", "mountPath": "/etc/kubellm", "readOnly": True},
                                         {"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "kubellm-models",
                                                                             "readOnly": True}},
                                {"name": "config", "configMap": {"name": f"{SERVICE}-config"}},
                                {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
                },
            },
        },
    }


def _manifest(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False, width=1000)


def build(store: str = "s3", params: dict[str, str] | None = None, serve_port: int = SERVICE_PORT,
          name: str = "nli") -> Workflow:
    st = Store(store)
    params = image_defaults(params, GPU_IMAGES)
    values = merge_params("nli", PARAMS, params)
    gpus = wp("gpus") if int(values["gpus"]) > 0 else None
    full = values["method"] == "full"
    trained = "merged" if full else "adapter"

    check = check_node("nli", PARAMS, values)
    prepare = container_step("prepare-model", "steps.models", ["--name", inp("model"), "--out-param", "/tmp/model-path"],
                             st, [Parameter(name="model")],
                             [Parameter(name="model-path", value_from=m.ValueFrom(path="/tmp/model-path"))],
                             cpu="2", mem="6Gi", models=True, deadline=3 * 3600)

    data_out, data_path = st.out("nli-data", "data")
    nli_data = container_step("nli-data", "steps.nli_data",
                              ["--out", data_path, "--dataset", wp("dataset"), "--max-pairs", wp("max-pairs"),
                               "--seed", wp("seed")],
                              st, [], data_out, cpu="1", mem="2Gi", models=True, deadline=3 * 3600)

    d_in, d_read = st.inp("data")
    ft_out, ft_path = st.out("finetune", "finetune")
    finetune = container_step(
        "finetune", "steps.nli_train",
        ["--data", d_read, "--out", ft_path, "--base-model", inp("model"),
         "--method", wp("method"), "--max-steps", wp("steps"), "--r", wp("lora-r"),
         "--lora-layers", wp("lora-layers"), "--learning-rate", wp("learning-rate"),
         "--batch-size", wp("batch-size"), "--max-length", wp("max-length"),
         "--seed", wp("seed"), "--merge", "true" if full else "false"],
        st, d_in + [Parameter(name="model")], ft_out, cpu="2", mem="12Gi", gpus=gpus, models=True,
        deadline=12 * 3600, metrics=("last_loss", "tokens_per_s"))

    ins, reads = st.inputs("data", "finetune")
    rep_out, rep_path = st.out("evaluate", "report")
    for a in rep_out:
        a.archive = NoneArchiveStrategy()  # stored as files: the Argo UI opens report.html directly
    evaluate = container_step(
        "evaluate", "steps.nli_evaluate",
        ["--data", reads["data"], "--zero-shot", inp("model"), "--finetuned", f"{reads['finetune']}/{trained}",
         "--out", rep_path, "--limit", wp("eval-limit"), "--seed", wp("seed")],
        st, ins + [Parameter(name="model")], rep_out, cpu="2", mem="6Gi", models=True,
        metrics=("accuracy", "zero_shot_accuracy", "accuracy_diff"), deadline=3 * 3600)

    ins, reads = st.inputs("finetune", "report")
    publish = container_step(
        "publish", "steps.nli_publish",
        ["--model", f"{reads['finetune']}/{trained}", "--report", reads["report"], "--root", MODEL_ROOT,
         "--version", "{{workflow.name}}", "--training-data", wp("dataset")],
        st, ins, [], cpu="1", mem="1Gi", models=True, deadline=3600)

    # kubectl apply, as Argo's resource templates do; the ConfigMap first, since the pods mount it
    deploy_config = Resource(
        name="deploy-config", action="apply",
        manifest=_manifest(config_map(wp("max-batch-size"), wp("max-wait-ms"))))
    # Argo's conditions are label selectors over the object's fields: they cannot compare two fields
    # (updatedReplicas with replicas). These hold once the new pods serve and none is unavailable;
    # pods of the old version may still answer then, so the smoke node waits for the new version.
    deploy = Resource(
        name="deploy", action="apply", manifest=_manifest(deployment("{{workflow.name}}", wp("steps-image"), serve_port)),
        success_condition="status.updatedReplicas > 0, status.availableReplicas > 0, !status.unavailableReplicas",
        active_deadline_seconds=1800)

    ins, reads = st.inputs("data", "report")
    smoke_out, smoke_path = st.out("smoke", "smoke")
    smoke = container_step(
        "smoke", "steps.nli_smoke",
        ["--url", wp("service-url"), "--version", "{{workflow.name}}", "--data", reads["data"],
         "--report", reads["report"], "--out", smoke_path],
        st, ins, smoke_out, cpu="200m", mem="512Mi", retry=True, deadline=1800)

    with Workflow(**workflow_fields(name, PARAMS, values, st.kind)) as wf:
        with DAG(name="main"):
            t_check = Task(name="check-params", template=check)
            t_prep = Task(name="prepare-model", template=prepare,
                          arguments=[Parameter(name="model", value=wp("model"))])
            t_data = Task(name="nli-data", template=nli_data)
            model_path = t_prep.get_parameter("model-path").value
            t_ft = Task(name="finetune", template=finetune,
                        arguments=[st.arg("nli-data", "data"), Parameter(name="model", value=model_path)])
            t_eval = Task(name="evaluate", template=evaluate,
                          arguments=[st.arg("nli-data", "data"), st.arg("finetune", "finetune"),
                                     Parameter(name="model", value=model_path)])
            t_pub = Task(name="publish", template=publish,
                         arguments=[st.arg("finetune", "finetune"), st.arg("evaluate", "report")])
            t_cfg = Task(name="deploy-config", template=deploy_config)
            t_dep = Task(name="deploy", template=deploy)
            t_smoke = Task(name="smoke", template=smoke,
                           arguments=[st.arg("nli-data", "data"), st.arg("evaluate", "report")])
            t_check >> [t_prep, t_data]
            [t_prep, t_data] >> t_ft >> t_eval >> t_pub >> t_cfg >> t_dep >> t_smoke
        add_templates(wf, [check, prepare, nli_data, finetune, evaluate, publish, deploy_config, deploy, smoke])
    return wf


def validate_params(params: dict[str, str], files: bool = True) -> dict[str, str]:
    """Fail before any work on a value that cannot work, saying how to fix it. `files`: also check
    what lives on this machine (not from the check node of a cluster run)."""
    values = check_params("nli", PARAMS, image_defaults(params, GPU_IMAGES))
    check_training(values, "model", GPU_IMAGES, files)
    return values
