"""Multi-node fine-tuning as a Kubeflow Trainer TrainJob: the manifest, its validation, the resource
template's conditions against the statuses Trainer writes, and `kubellm lint` on a compiled workflow."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from hera.workflows import DAG, Artifact, Container, Parameter, Workflow

from workflows import cli
from workflows.argo import conditions
from workflows.lint import lint_workflow
from workflows.trainjob import (FAILURE_CONDITION, SUCCESS_CONDITION, trainjob_manifest, trainjob_step,
                                validate_trainjob)

KUEUE = {"kueue.x-k8s.io/queue-name": "kubellm", "kueue.x-k8s.io/priority-class": "kubellm-training"}


def manifest(**over) -> dict:
    kw = dict(name="{{workflow.name}}-finetune", image="{{workflow.parameters.steps-image}}", module="steps.finetune",
              args=["--data", "/data/{{workflow.name}}/data", "--out", "/data/{{workflow.name}}/finetune",
                    "--base-model", "{{inputs.parameters.model}}", "--seed", "{{workflow.parameters.seed}}"],
              nodes=2, nproc=2, cpu="8", mem="32Gi", gpus="2", claim="kubellm-data", mount_path="/data",
              env=[{"name": "TOKENIZERS_PARALLELISM", "value": "false"}], labels=dict(KUEUE))
    kw.update(over)
    return trainjob_manifest(**kw)


def pod_patch(m: dict) -> dict:
    [patch] = m["spec"]["runtimePatches"]
    [rjob] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"
    return rjob["template"]["spec"]["template"]["spec"]


# ---------------------------------------------------------------------------------------------
# The manifest

def test_manifest_validates_and_runs_torchrun_on_every_node():
    m = manifest(models_claim="kubellm-models")
    assert validate_trainjob(m) == []
    assert m["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and m["kind"] == "TrainJob"
    assert m["metadata"] == {"name": "{{workflow.name}}-finetune", "labels": KUEUE}
    assert m["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                       "name": "torch-distributed"}
    t = m["spec"]["trainer"]
    # torchrun reads PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR ... that the torch runtime sets
    assert t["command"] == ["torchrun", "-m", "steps.finetune"]
    assert t["args"][:2] == ["--data", "/data/{{workflow.name}}/data"]
    assert (t["numNodes"], t["numProcPerNode"]) == (2, 2)
    assert t["resourcesPerNode"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    assert t["resourcesPerNode"]["requests"] == t["resourcesPerNode"]["limits"]
    assert {"name": "KUBELLM_CACHE", "value": "/models"} in t["env"]
    pod = pod_patch(m)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    [node] = pod["containers"]
    assert node["name"] == "node" and node["securityContext"]["allowPrivilegeEscalation"] is False
    assert "env" not in node  # the node container's env may only come from spec.trainer.env
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["data"]["persistentVolumeClaim"]["claimName"] == "kubellm-data"
    assert vols["models"]["persistentVolumeClaim"]["claimName"] == "kubellm-models"
    assert {"name": "data", "mountPath": "/data"} in node["volumeMounts"]
    assert {"name": "models", "mountPath": "/models"} in node["volumeMounts"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_cpu_only_auto_procs_and_generate_name():
    m = manifest(name="{{workflow.name}}-finetune-", nproc="auto", gpus=None, claim=None, mount_path=None)
    assert validate_trainjob(m) == []
    assert m["metadata"]["generateName"] == "{{workflow.name}}-finetune-" and "name" not in m["metadata"]
    assert "numProcPerNode" not in m["spec"]["trainer"]  # the runtime's "auto"
    assert "nvidia.com/gpu" not in m["spec"]["trainer"]["resourcesPerNode"]["limits"]
    pod = pod_patch(m)
    assert "volumes" not in pod and "tolerations" not in pod


def test_cpu_ranks_share_the_node_cores():
    env = manifest(gpus=None, nproc=2, cpu="8")["spec"]["trainer"]["env"]
    assert {"name": "OMP_NUM_THREADS", "value": "4"} in env
    assert "OMP_NUM_THREADS" not in {e["name"] for e in manifest()["spec"]["trainer"]["env"]}  # GPUs: one each


@pytest.mark.parametrize("over, message", [
    ({"nodes": 0}, "nodes must be a whole number of at least 1"),
    ({"nodes": "{{workflow.parameters.nodes}}"}, "substitutes placeholders as text"),
    ({"nproc": "{{workflow.parameters.nproc}}"}, "fix it at compile time"),
    ({"nproc": "many"}, "nproc must be a whole number or auto"),
    ({"claim": "kubellm-data", "mount_path": None}, "claim and mount_path go together"),
    ({"env": [{"name": "PET_NNODES", "value": "4"}]}, "PET_NNODES"),
])
def test_manifest_refuses_what_would_not_run(over, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        manifest(**over)


# ---------------------------------------------------------------------------------------------
# Validation

def test_missing_runtime_ref_is_named():
    m = manifest()
    del m["spec"]["runtimeRef"]
    assert validate_trainjob(m) == ["spec.runtimeRef: required field missing"]


def test_num_nodes_as_text():
    m = manifest()
    m["spec"]["trainer"]["numNodes"] = "two"
    [problem] = validate_trainjob(m)
    assert problem.startswith("spec.trainer.numNodes: ") and "integer" in problem and "'two'" in problem


def test_placeholder_in_an_integer_field_is_reported_as_such():
    m = manifest()
    m["spec"]["trainer"]["numNodes"] = "{{workflow.parameters.nodes}}"
    [problem] = validate_trainjob(m)
    assert problem.startswith("spec.trainer.numNodes: holds the Argo placeholder '{{workflow.parameters.nodes}}'")
    assert "integer" in problem


def test_placeholders_in_string_fields_are_fine():
    m = manifest(image="{{inputs.parameters.image}}", gpus="{{workflow.parameters.gpus}}", cpu="{{inputs.parameters.cpu}}")
    assert validate_trainjob(m) == []


def test_unknown_fields_are_forbidden_at_any_depth():
    # the generated models ignore extra keys by default; the API server would prune them silently
    m = manifest()
    m["spec"]["trainer"]["comand"] = ["python"]
    pod_patch(m)["containers"][0]["volumeMount"] = []
    assert validate_trainjob(m) == [
        "spec.runtimePatches[0].trainingRuntimeSpec.template.spec.replicatedJobs[0].template.spec.template.spec"
        ".containers[0].volumeMount: unknown field (not part of the TrainJob schema of kubeflow-trainer-api 2.3.0)",
        "spec.trainer.comand: unknown field (not part of the TrainJob schema of kubeflow-trainer-api 2.3.0)",
    ]


def test_snake_case_names_are_not_the_api():
    m = manifest()
    m["spec"]["trainer"]["num_nodes"] = m["spec"]["trainer"].pop("numNodes")
    assert validate_trainjob(m) == ["spec.trainer.num_nodes: unknown field (not part of the TrainJob schema of "
                                    "kubeflow-trainer-api 2.3.0)"]


def test_kind_version_name_counts_quantities_and_reserved_env():
    m = manifest()
    m["apiVersion"] = "trainer.kubeflow.org/v1"
    m["kind"] = "Trainjob"
    m["metadata"]["name"] = "Finetune_1"
    m["spec"]["trainer"]["numNodes"] = 0
    m["spec"]["trainer"]["resourcesPerNode"]["limits"]["memory"] = "32GB"
    m["spec"]["trainer"]["env"].append({"name": "PET_MASTER_PORT", "value": "1234"})
    pod_patch(m)["containers"][0]["env"] = [{"name": "X", "value": "1"}]
    problems = validate_trainjob(m)
    assert problems == [
        "apiVersion: expected trainer.kubeflow.org/v1alpha1, got 'trainer.kubeflow.org/v1'",
        "kind: expected TrainJob, got 'Trainjob'",
        "metadata.name: 'Finetune_1' is not an RFC 1035 label (lower-case letters, digits and '-', starting with "
        "a letter), which TrainJob names must be",
        "spec.trainer.resourcesPerNode.limits.memory: '32GB' is not a Kubernetes quantity (e.g. 2, 500m, 12Gi)",
        "spec.trainer.numNodes: must be at least 1, got 0",
        "spec.trainer.env[1].name: PET_MASTER_PORT is set by the torch runtime on every node (the Trainer webhook "
        "refuses it here)",
        "spec.runtimePatches[0].trainingRuntimeSpec.template.spec.replicatedJobs[0].template.spec.template.spec"
        ".containers[0].env: the `node` container's env is set through spec.trainer.env (the Trainer webhook "
        "refuses it here)",
    ]


def test_not_a_mapping():
    assert validate_trainjob(["TrainJob"]) == ["the manifest must be a mapping, got list"]


# ---------------------------------------------------------------------------------------------
# The conditions, against the statuses Trainer 2.3.0 writes

def cond(type_: str, status: str = "True", reason: str = "") -> dict:
    return {"type": type_, "status": status, "reason": reason or type_, "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


def job(succeeded=0, failed=0, active=0, suspended=0, name="node") -> dict:
    return {"name": name, "ready": active, "succeeded": succeeded, "failed": failed, "active": active,
            "suspended": suspended}


def outcome(status: dict | None) -> str | None:
    obj = manifest() | ({"status": status} if status is not None else {})
    return conditions.check(obj, conditions.parse(SUCCESS_CONDITION), conditions.parse(FAILURE_CONDITION))


@pytest.mark.parametrize("status, expected", [
    (None, None),                                                          # just created
    ({"jobsStatus": [job()]}, None),                                       # pods pending
    ({"jobsStatus": [job(active=1)]}, None),                               # training
    ({"conditions": [cond("Suspended")], "jobsStatus": [job(suspended=1)]}, None),  # waiting in Kueue
    ({"conditions": [cond("Suspended", "False", "Resumed")], "jobsStatus": [job(active=1)]}, None),
    ({"conditions": [cond("Suspended", "False", "Resumed")], "jobsStatus": [job(failed=1, active=1)]}, None),  # JobSet restarting
    ({"conditions": [cond("Complete", reason="AllJobsCompleted")], "jobsStatus": [job(succeeded=1)]}, "succeeded"),
    ({"conditions": [cond("Suspended", "False", "Resumed"), cond("Complete", reason="AllJobsCompleted")],
      "jobsStatus": [job(succeeded=1)]}, "succeeded"),
    ({"conditions": [cond("Failed", reason="FailedJobs")], "jobsStatus": [job(failed=1)]}, "failed"),
    ({"conditions": [cond("Suspended", "False", "Resumed"), cond("Failed", reason="FailedJobs")],
      "jobsStatus": [job(failed=1)]}, "failed"),
    ({"conditions": [cond("Suspended", "False", "Resumed"), cond("Failed", reason="DeadlineExceeded")]}, "failed"),
    # an initializer first: only the trainer's own job counts
    ({"jobsStatus": [job(succeeded=1, name="dataset-initializer"), job(active=1)]}, None),
])
def test_conditions_on_trainjob_statuses(status, expected):
    got = outcome(status)
    assert (got if got is None else got.split(":")[0]) == expected, got


def test_a_gjson_query_is_not_a_condition_argo_can_parse():
    # why the conditions use positions: Argo parses them as label selectors (labels.Parse), whose keys
    # are qualified names, so `#(...)` never reaches gjson
    with pytest.raises(ValueError, match="not a valid key"):
        conditions.parse('status.conditions.#(type=="Complete").status == True')


# ---------------------------------------------------------------------------------------------
# The Argo template and `kubellm lint`

def compiled(m: dict) -> dict:
    with Workflow(generate_name="ft-", entrypoint="main", arguments=[Parameter(name="steps-image", value="img:1"),
                                                                     Parameter(name="seed", value="1")]) as w:
        step = trainjob_step("finetune", m, [Parameter(name="model")])
        after = Container(name="after", image="{{workflow.parameters.steps-image}}", command=["true"])
        with DAG(name="main"):
            step(arguments={"model": "m"}) >> after()
    return w.to_dict()


def resource_template(doc: dict) -> tuple[int, dict]:
    return next((i, t) for i, t in enumerate(doc["spec"]["templates"]) if "resource" in t)


def test_trainjob_step_is_a_create_owned_by_the_workflow():
    doc = compiled(manifest())
    _, t = resource_template(doc)
    r = t["resource"]
    assert r["action"] == "create" and r["setOwnerReference"] is True
    assert (r["successCondition"], r["failureCondition"]) == (SUCCESS_CONDITION, FAILURE_CONDITION)
    assert yaml.safe_load(r["manifest"]) == manifest()
    assert t["inputs"]["parameters"] == [{"name": "model"}]


def test_compiled_workflow_passes_lint():
    assert lint_workflow(compiled(manifest()), "ft.yaml") == []


def test_an_invalid_trainjob_fails_lint_with_the_template_path(tmp_path, capsys):
    doc = compiled(manifest())
    i, t = resource_template(doc)
    bad = yaml.safe_load(t["resource"]["manifest"])
    bad["spec"]["trainer"]["numNodes"] = "two"
    del bad["spec"]["runtimeRef"]
    t["resource"]["manifest"] = yaml.safe_dump(bad)
    where = f"ft.yaml: spec.templates[{i}].resource.manifest"
    assert lint_workflow(doc, "ft.yaml") == [
        f"{where}: spec.runtimeRef: required field missing",
        f"{where}: spec.trainer.numNodes: Input should be a valid integer (got 'two')",
    ]
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli.main(["lint", "--no-cluster", str(path)]) == 1
    assert f"{where}: spec.runtimeRef: required field missing" in capsys.readouterr().out


def test_unquoted_placeholder_in_a_manifest_is_reported():
    doc = compiled(manifest())
    i, t = resource_template(doc)
    t["resource"]["manifest"] = t["resource"]["manifest"].replace("numNodes: 2", "numNodes: {{workflow.parameters.seed}}")
    [problem] = lint_workflow(doc, "ft.yaml")
    assert problem.startswith(f"ft.yaml: spec.templates[{i}].resource.manifest: not YAML until Argo substitutes it")


def test_other_manifests_are_left_alone():
    doc = compiled(manifest())
    _, t = resource_template(doc)
    t["resource"]["manifest"] = yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                                                "data": {"a": "1"}, "extra": {"anything": True}})
    assert lint_workflow(doc, "ft.yaml") == []


def test_trainjob_step_refuses_a_bad_manifest_and_artifacts():
    m = manifest()
    m["spec"]["trainer"]["numNodes"] = "two"
    with pytest.raises(ValueError, match=r"spec\.trainer\.numNodes"):
        trainjob_step("finetune", m, [])
    with pytest.raises(ValueError, match="pvc store"):
        trainjob_step("finetune", manifest(), [Artifact(name="data", path="/in/data")])


def test_manifest_is_not_shared_with_the_caller():
    m = manifest()
    before = copy.deepcopy(m)
    validate_trainjob(m)
    trainjob_step("finetune", m, [])
    assert m == before


# ---------------------------------------------------------------------------------------------
# The local cluster's TrainJob (workflows/runner/localcluster.py): one process per node

# the folder comes as an argument: a path under a mount is mapped where it is a whole argument or env value
RANK_SCRIPT = ("import os, pathlib, sys; e = os.environ; "
               "pathlib.Path(sys.argv[1], e['PET_NODE_RANK']).write_text("
               "' '.join(e[k] for k in ('PET_NNODES', 'PET_NPROC_PER_NODE', 'PET_MASTER_ADDR', 'PET_MASTER_PORT', 'GREETING')))")


def local_manifest(command: list[str], nodes: int = 2, **over) -> dict:
    kw = dict(name="ft-", image="steps", module="unused", args=[], nodes=nodes, nproc=1, cpu="1", mem="1Gi",
              gpus=None, claim="kubellm-data", mount_path="/data", env=[{"name": "GREETING", "value": "hi"}],
              labels={})
    kw.update(over)
    m = trainjob_manifest(**kw)
    m["spec"]["trainer"]["command"] = command
    return m


def local_cluster(tmp_path):
    import os

    from workflows.runner.localcluster import LocalCluster

    data = tmp_path / "data"
    data.mkdir()
    return LocalCluster(tmp_path / "cluster", {"kubellm-data": data}, {"PATH": os.environ["PATH"]}), data


def wait_for(cluster, obj, timeout: float = 60.0, success=SUCCESS_CONDITION, failure=FAILURE_CONDITION):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        outcome, _ = cluster.wait_state(obj, conditions.parse(success), conditions.parse(failure))
        if outcome is not None:
            return outcome
        time.sleep(0.2)
    raise AssertionError(f"no outcome after {timeout}s: {cluster.status(obj).get('status')}")


def test_local_trainjob_runs_every_node_with_the_trainer_env_and_the_claim(tmp_path):
    cluster, data = local_cluster(tmp_path)
    (data / "ranks").mkdir()
    obj = cluster.act("create", local_manifest(["python", "-c", RANK_SCRIPT, "/data/ranks"], nodes=3), "strategic", "t")
    assert obj["metadata"]["name"].startswith("ft-") and len(obj["metadata"]["name"]) == 8  # generateName
    assert wait_for(cluster, obj) == "succeeded"
    seen = {p.name: p.read_text().split() for p in (data / "ranks").iterdir()}
    assert sorted(seen) == ["0", "1", "2"]
    ports = {v[3] for v in seen.values()}
    assert len(ports) == 1 and all(v[:3] == ["3", "1", "127.0.0.1"] and v[4] == "hi" for v in seen.values())
    status = cluster.status(obj)["status"]
    assert status["conditions"][0]["type"] == "Complete" and status["jobsStatus"][0]["succeeded"] == 1


def test_local_trainjob_fails_with_the_exit_codes_and_stops_the_other_nodes(tmp_path):
    cluster, _ = local_cluster(tmp_path)
    script = ("import os, sys, time; rank = os.environ['PET_NODE_RANK']; print('node', rank, flush=True); "
              "sys.exit(3) if rank == '1' else time.sleep(120)")
    obj = cluster.act("create", local_manifest(["python", "-c", script]), "strategic", "t")
    outcome = wait_for(cluster, obj)
    assert outcome.startswith("failed: failure condition 'status.conditions.0.type==Failed' holds")
    assert "; node 1 exited with code 3 (exit codes: node 0: stopped, node 1: exited with code 3); " in outcome
    assert "log tail of node-1" in outcome and outcome.splitlines()[-1] == "node 1"
    [failed] = cluster.status(obj)["status"]["conditions"]
    assert failed["type"] == "Failed" and "exit codes: node 0: stopped, node 1: exited with code 3" in failed["message"]
    _wait_gone(cluster, obj)


def _pids(cluster, obj) -> list[int]:
    import json

    folder = cluster.folder(obj, "trainjobs")
    return [n["pid"] for n in json.loads((folder / "process.json").read_text())["nodes"]]


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # our own child that has ended (a zombie) is gone too
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:
        return True


def _wait_gone(cluster, obj, timeout: float = 20.0) -> None:
    import time

    end = time.monotonic() + timeout
    while any(_alive(p) for p in _pids(cluster, obj)):
        assert time.monotonic() < end, "the TrainJob's node processes are still running"
        time.sleep(0.2)


def test_local_trainjob_nodes_stop_when_no_run_waits_any_more(tmp_path, monkeypatch):
    from workflows.runner import localcluster

    monkeypatch.setattr(localcluster, "TRAINJOB_LEASE_S", 1.0)
    cluster, _ = local_cluster(tmp_path)
    obj = cluster.act("create", local_manifest(["python", "-c", "import time; time.sleep(120)"]), "strategic", "t")
    cluster.wait_state(obj, [], [])
    # the run is interrupted: nobody polls the TrainJob any more, so its nodes end within the lease
    _wait_gone(cluster, obj)
    status = cluster.status(obj)["status"]
    assert status["conditions"][0]["type"] == "Failed" and "was stopped by SIGTERM" in status["conditions"][0]["message"]
    assert "no run waits for the TrainJob" in (cluster.folder(obj, "trainjobs") / "node-0" / "log.txt").read_text()


def test_local_trainjob_refusals(tmp_path):
    from workflows.runner.errors import TaskError

    cluster, _ = local_cluster(tmp_path)
    m = local_manifest(["python", "-c", "pass"], name="ft-fixed")
    obj = cluster.act("create", m, "strategic", "t")
    assert wait_for(cluster, obj) == "succeeded"
    with pytest.raises(TaskError, match="already exists in the local cluster"):
        cluster.act("create", m, "strategic", "t")
    other = copy.deepcopy(m)
    other["spec"]["trainer"]["args"] = ["--more"]
    with pytest.raises(TaskError, match="a TrainJob's spec cannot change"):
        cluster.act("apply", other, "strategic", "t")
    with pytest.raises(TaskError, match="generateName needs action create"):
        cluster.act("apply", local_manifest(["python", "-c", "pass"]), "strategic", "t")


def test_local_trainjob_all_reduce_over_torchrun(tmp_path):
    # the real thing, tiny: torchrun on each of 2 nodes reads the PET_* env, the ranks meet over gloo
    pytest.importorskip("torch")
    cluster, data = local_cluster(tmp_path)
    script = tmp_path / "allreduce.py"
    script.write_text(
        "import os, torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "t = torch.tensor([float(dist.get_rank() + 1)])\n"
        "dist.all_reduce(t)\n"
        "open(os.path.join(os.environ['OUT'], f'rank{dist.get_rank()}-of-{dist.get_world_size()}'), 'w')"
        ".write(str(int(t.item())))\n"
        "dist.destroy_process_group()\n")
    m = local_manifest(["torchrun", str(script)], env=[{"name": "OUT", "value": "/data"}])
    obj = cluster.act("create", m, "strategic", "t")
    assert wait_for(cluster, obj, timeout=240) == "succeeded", cluster.status(obj)
    assert {p.name: p.read_text() for p in data.iterdir()} == {"rank0-of-2": "3", "rank1-of-2": "3"}


def test_a_workflow_with_a_trainjob_runs_on_the_local_runner(tmp_path):
    import io

    from rich.console import Console

    from workflows.runner import run_workflow

    from hera.workflows import models as hm

    claim = hm.Volume(name="data", persistent_volume_claim=hm.PersistentVolumeClaimVolumeSource(claim_name="kubellm-data"))
    with Workflow(generate_name="ft-", entrypoint="main", arguments=[Parameter(name="greeting", value="hello")],
                  volumes=[claim]) as w:
        m = local_manifest(["python", "-c", RANK_SCRIPT, "/data"], nodes=2,
                           name="{{workflow.name}}-ft-", env=[{"name": "GREETING", "value": "{{inputs.parameters.greeting}}"}])
        step = trainjob_step("finetune", m, [Parameter(name="greeting")])
        check = Container(name="check", image="steps", command=["python", "-c", (
            "import pathlib, sys; d = pathlib.Path(sys.argv[1]); r = sorted(p.name for p in d.iterdir() if p.name.isdigit()); "
            "assert r == ['0', '1'], r; assert (d / '0').read_text().endswith(' hello')"), "/data"],
            volume_mounts=[hm.VolumeMount(name="data", mount_path="/data")])
        with DAG(name="main"):
            step(arguments={"greeting": "{{workflow.parameters.greeting}}"}) >> check()
    result = run_workflow(w.to_dict(), tmp_path / "run", cluster=tmp_path / "cluster",
                          console=Console(file=io.StringIO(), width=120))
    assert result.phase == "Succeeded", (result.message, result.log_tail)
    assert "trainjob/" in (tmp_path / "run" / "nodes" / "finetune" / "log.txt").read_text()


def test_the_local_runner_refuses_other_kinds_and_owner_references_before_starting(tmp_path):
    from workflows.runner import WorkflowError, run_workflow

    doc = compiled(manifest())
    i, t = resource_template(doc)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {}}
    t["resource"]["manifest"] = yaml.safe_dump(job)
    with pytest.raises(WorkflowError) as e:
        run_workflow(doc, tmp_path / "run", cluster=tmp_path / "cluster")
    text = str(e.value)
    assert f"spec.templates[{i}].resource.manifest: batch/v1 Job cannot run locally" in text
    assert f"spec.templates[{i}].resource.setOwnerReference: not supported by the local runner for a Job" in text


def test_local_trainjob_nodes_stop_when_the_runner_process_exits(tmp_path):
    import subprocess
    import sys

    from workflows.runner.localcluster import LocalCluster

    cluster = LocalCluster(tmp_path / "cluster", {"kubellm-data": tmp_path}, {})
    code = ("import json, sys; from pathlib import Path; from workflows.runner.localcluster import LocalCluster; "
            "c = LocalCluster(Path(sys.argv[1]), {'kubellm-data': Path(sys.argv[2])}, {}); "
            "print(json.dumps(c.act('create', json.loads(sys.argv[3]), 'strategic', 't')))")
    m = local_manifest(["python", "-c", "import time; time.sleep(120)"])
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cluster"), str(tmp_path), json.dumps(m)],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent).stdout
    obj = json.loads(out)  # that "runner" has exited: its TrainJob's nodes go with it (the lease is 10 s)
    _wait_gone(cluster, obj, timeout=8)
    assert "the runner that started it has exited" in (cluster.folder(obj, "trainjobs") / "node-1" / "log.txt").read_text()


@pytest.mark.parametrize("trainer, expected", [
    ({"numProcPerNode": 3, "resourcesPerNode": {"limits": {"cpu": "8"}}}, "3"),
    ({"resourcesPerNode": {"limits": {"cpu": "2", "nvidia.com/gpu": "1"}}}, "auto"),
    ({"resourcesPerNode": {"requests": {"cpu": "2500m"}, "limits": {"cpu": "4"}}}, "3"),
    ({"resourcesPerNode": {"limits": {"cpu": "500m"}}}, "1"),
    ({}, "1"),
])
def test_procs_per_node_as_the_torch_plugin_sets_it(trainer, expected):
    from workflows.trainjob import procs_per_node

    assert procs_per_node(trainer) == expected


def test_local_trainjob_deadline_fails_it(tmp_path):
    cluster, _ = local_cluster(tmp_path)
    m = local_manifest(["python", "-c", "import time; time.sleep(120)"], deadline=1)
    obj = cluster.act("create", m, "strategic", "t")
    outcome = wait_for(cluster, obj, timeout=30)
    assert "activeDeadlineSeconds (1) exceeded (exit codes: node 0: stopped, node 1: stopped)" in outcome
    assert cluster.status(obj)["status"]["conditions"][0]["reason"] == "DeadlineExceeded"
    _wait_gone(cluster, obj)


def test_step_flags_become_overrides_that_torchrun_passes_on_and_the_local_cluster_maps():
    """torchrun reads `--r` (LoRA rank) as an ambiguous option of its own and would take `--nproc` for
    --nproc-per-node, so a TrainJob hands a step its settings as key=value overrides; locally, the path
    in such an override is mapped like a whole path argument."""
    from torch.distributed.run import get_args_parser

    from workflows.runner.localcluster import _rewriter
    from workflows.trainjob import as_overrides

    flags = ["--data", "/data/wf/generate/data", "--r", "16", "--max-steps", "4"]
    with pytest.raises(SystemExit):  # what the flags themselves would do
        get_args_parser().parse_args(["-m", "steps.finetune", *flags])
    args = as_overrides(flags)
    assert args == ["data=/data/wf/generate/data", "r=16", "max_steps=4"]
    assert get_args_parser().parse_args(["-m", "steps.finetune", *args]).training_script_args == args
    with pytest.raises(ValueError, match="--flag value pairs"):
        as_overrides(["--data"])
    rewrite = _rewriter([("/data", Path("/tmp/vol"))])
    assert [rewrite(a) for a in args] == ["data=/tmp/vol/wf/generate/data", "r=16", "max_steps=4"]
    assert rewrite("/data/x") == "/tmp/vol/x" and rewrite("note=/elsewhere") == "note=/elsewhere"
