"""steps.harvest sources cluster, dump and Prometheus: redact() on its own, then whole harvests against
a Kubernetes-like API server on loopback that answers from the recorded objects in
tests/fixtures/cluster (paged lists, pod logs, a refused kind) and records every path asked for."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from steps.harvest import HarvestConfig, run
from steps.harvest_cluster import parse_log_name, redact, sensitive_name
from tests.apiserver import TOKEN, ApiServer, no_proxy, status, write_kubeconfig  # noqa: F401 (no_proxy: autouse)

# AWS's documented example key id, assembled here so that no credential-shaped string is tracked;
# the fixtures hold a placeholder for it, filled in a copy the tests read
FAKE_AWS_KEY = "AK" + "IA" + "IOSFODNN7EXAMPLE"


def _fixtures() -> Path:
    import shutil
    import tempfile

    copy = Path(tempfile.mkdtemp(prefix="kubellm-cluster-fixtures-")) / "cluster"
    shutil.copytree(Path(__file__).parent / "fixtures" / "cluster", copy)
    for f in copy.iterdir():
        f.write_text(f.read_text().replace("@FAKE_AWS_KEY@", FAKE_AWS_KEY))
    return copy


FIXTURES = _fixtures()
POD = "trainer-6b7f9c8d4-x2k4p"
LISTS = {"/api/v1/nodes": "nodes.json", "/api/v1/events": "events.json", "/api/v1/pods": "pods.json",
         "/api/v1/configmaps": "configmaps.json", "/apis/apps/v1/deployments": "deployments.json",
         "/apis/batch/v1/jobs": "jobs.json", "/apis/argoproj.io/v1alpha1/workflows": "workflow-distill.json",
         "/api/v1/secrets": "secrets.json"}
LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
SECRETS_IN_FIXTURES = ("ZmFrZS1oZi10b2tlbi1zaG91bGQtbmV2ZXItYXBwZWFy", "fake-S3cr3t-pw-91c", FAKE_AWS_KEY,
                       "hunter2-fake", "fake-db-pass-4f9a2")
PROM = {"gpu_util": {"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {"Hostname": "gke-ml-a2-ultragpu-4g-pool-6f2c9d1e-x7k2", "gpu": "0", "modelName": "NVIDIA A100-SXM4-80GB"},
     "value": [1796119200.0, "97"]}]}}}


def items(name: str) -> list[dict]:
    data = json.loads((FIXTURES / name).read_text())
    return data["items"] if "items" in data else [data]


def pod_log(request: dict, m) -> tuple:
    """GET .../pods/{pod}/log?container=C&tailLines=N from the fixture NS_POD_C.log; a container
    without one has not started."""
    query = request["query"]
    file = FIXTURES / f"{m.group(1)}_{m.group(2)}_{query.get('container')}.log"
    if not file.is_file():
        return 400, status(400, "BadRequest", "container is waiting to start")
    return 200, "".join(file.read_text().splitlines(keepends=True)[-int(query.get("tailLines", 10**9)):])


def prometheus(request: dict, _) -> tuple:
    return 200, PROM.get(request["query"].get("query", ""), {
        "status": "error", "errorType": "bad_data", "error": "parse error"})


def fake_cluster(forbidden: tuple[str, ...] = ()) -> ApiServer:
    """The lists of LISTS (cluster-wide or /namespaces/{ns}/...), paged by limit/continue; pod logs;
    /api/v1/query for Prometheus. Paths in `forbidden` answer 403 like an RBAC refusal."""
    routes = {path: items(file) for path, file in LISTS.items()}
    return ApiServer({**routes, LOG: pod_log, "/api/v1/query": prometheus}, forbidden=forbidden)


def docs_of(out: Path) -> dict[str, dict]:
    return {d["id"]: d for d in map(json.loads, (out / "docs.jsonl").read_text().splitlines())}


def harvest(tmp_path: Path, api: ApiServer, name: str = "kb", **kw) -> tuple[dict, dict]:
    kubeconfig = write_kubeconfig(tmp_path / "config", api.url)
    out = tmp_path / name
    run(HarvestConfig(out=out, sources=["cluster"], kubeconfig=str(kubeconfig), **kw))
    return docs_of(out), json.loads((out / "manifest.json").read_text())


# ------------------------------------------------------------------ redaction


@pytest.mark.parametrize("text, kept, gone", [
    ("DB_PASSWORD=fake-S3cr3t-pw", "DB_PASSWORD=", "fake-S3cr3t-pw"),
    ('{"apiKey": "sk" "-live-123456", "user": "ada"}', '"user": "ada"', "sk" "-live-123456"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCY", "aws_secret_access_key", "wJalrXUtnFEMI"),
    (f"id {FAKE_AWS_KEY} used", "id [REDACTED] used", FAKE_AWS_KEY),
    ("Authorization: Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6", "Authorization: Bearer [REDACTED]", "eyJhbGci"),
    ("s3://minio:minio-pass-77@minio.ml:9000/runs", "s3://minio:[REDACTED]@minio.ml:9000/runs", "minio-pass-77"),
    ("python train.py --hf-token hf_abcdef123 --epochs 3", "--epochs 3", "hf_abcdef123"),
    ("-----BEGIN OPENSSH PRIVATE " "KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE " "KEY-----\nnext",
     "next", "b3BlbnNzaC1rZXktdjEAAAAA"),
])
def test_redact_removes_credentials(text, kept, gone):
    out = redact(text)
    assert gone not in out and kept in out and "[REDACTED]" in out
    assert redact(out) == out  # idempotent: a carried-over document stays as it was


def test_redact_keeps_what_only_looks_like_a_credential():
    text = ("max_tokens=512 tokenizer=bpe monkey=3 nvidia.com/gpu=present:NoSchedule "
            "https://prometheus.monitoring:9090/api/v1/query")
    assert redact(text) == text
    assert sensitive_name("DB_PASSWORD") and sensitive_name("apiKey") and sensitive_name("SSH_KEY")
    assert not sensitive_name("MAX_TOKENS") and not sensitive_name("monkey")


def test_log_file_names():
    assert parse_log_name(f"ml_{POD}_trainer.log") == ("ml", POD, "trainer")
    assert parse_log_name("ml_web-0.log") == ("ml", "web-0", None)
    with pytest.raises(ValueError, match="<namespace>_<pod>_<container>.log"):
        parse_log_name("trainer.log")


# ------------------------------------------------------------------ the live cluster


def test_cluster_harvest_reads_every_kind_pages_and_never_asks_for_secrets(tmp_path):
    with fake_cluster() as api:
        docs, manifest = harvest(tmp_path, api, chunk_size=1, log_lines=5)
    paths = [r["path"] for r in api.requests]
    assert not any("secret" in p for p in paths)
    assert {r["authorization"] for r in api.requests} == {f"Bearer {TOKEN}"}
    # two nodes, one per page: the second request carries the first answer's continue token
    node_requests = [r for r in api.requests if r["path"] == "/api/v1/nodes"]
    assert [r["query"].get("continue") for r in node_requests] == [None, "at-1"]
    assert all(r["query"]["limit"] == "1" for r in node_requests)
    # logs only of the troubled pods: the crash-looping trainer and the pending teacher, not the ready API
    logs = [(r["path"], {k: r["query"][k] for k in ("container", "tailLines")})
            for r in api.requests if r["path"].endswith("/log")]
    assert logs == [(f"/api/v1/namespaces/ml/pods/{POD}/log", {"container": "trainer", "tailLines": "5"}),
                    ("/api/v1/namespaces/ml/pods/vllm-teacher-5d8b7c6f9-qr7zt/log",
                     {"container": "vllm", "tailLines": "5"})]
    assert set(docs) == {
        "cluster/Node/gke-ml-a2-ultragpu-4g-pool-6f2c9d1e-x7k2", "cluster/Node/gke-ml-default-pool-0a9e3c7b-q1w2",
        f"cluster/Event/ml/{POD}.17f9a1c2d3e4b5a6", "cluster/Event/ml/vllm-teacher-5d8b7c6f9-qr7zt.17f9a0b1c2d3e4f5",
        f"cluster/Pod/ml/{POD}", "cluster/Pod/ml/vllm-teacher-5d8b7c6f9-qr7zt", "cluster/ConfigMap/ml/trainer-config",
        "cluster/Deployment/ml/trainer", "cluster/Job/ml/nli-eval-28931", "cluster/Workflow/ml/distill-x7q2m"}
    text = json.dumps(docs)
    for secret in SECRETS_IN_FIXTURES:
        assert secret not in text
    gpu = docs["cluster/Node/gke-ml-a2-ultragpu-4g-pool-6f2c9d1e-x7k2"]
    assert gpu["topic"] == "nodes-cluster" and gpu["object"] == "Node/gke-ml-a2-ultragpu-4g-pool-6f2c9d1e-x7k2"
    assert gpu["timestamp"] == "2026-12-01T09:58:40Z"  # the latest managedFields time
    assert "4 x NVIDIA-A100-SXM4-80GB" in gpu["text"] and "nvidia.com/gpu=present:NoSchedule" in gpu["text"]
    assert "nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB" in gpu["text"] and "nvidia.com/gpu 4" in gpu["text"]
    backoff = docs[f"cluster/Event/ml/{POD}.17f9a1c2d3e4b5a6"]
    assert backoff["title"] == f"Warning BackOff: Pod/ml/{POD}" and backoff["about"] == f"Pod/ml/{POD}"
    assert backoff["timestamp"] == "2026-12-01T10:01:47Z" and "count 14" in backoff["text"]
    pod = docs[f"cluster/Pod/ml/{POD}"]
    assert pod["topic"] == "pods-containers" and "CrashLoopBackOff" in pod["text"] and "restarts 14" in pod["text"]
    assert "CUDA out of memory" in pod["text"] and "starting trainer" not in pod["text"]  # the last 5 lines
    assert "postgres://trainer:[REDACTED]@" in pod["text"]
    assert "(no log read)" in docs["cluster/Pod/ml/vllm-teacher-5d8b7c6f9-qr7zt"]["text"]
    cm = docs["cluster/ConfigMap/ml/trainer-config"]
    assert cm["topic"] == "configmaps-secrets" and "DB_PASSWORD: [REDACTED]" in cm["text"]
    assert "MAX_TOKENS: 2048" in cm["text"] and "(428 characters)" in cm["text"]
    wf = docs["cluster/Workflow/ml/distill-x7q2m"]
    assert wf["topic"] == "other" and "phase Failed" in wf["text"]
    assert "failed node finetune (Pod, template finetune): Failed: OOMKilled (exit code 137)" in wf["text"]
    assert "harvest" not in wf["text"].split("failed node", 1)[1]  # succeeded nodes are not listed
    assert docs["cluster/Job/ml/nli-eval-28931"]["topic"] == "jobs-cronjobs"
    assert all(len(d["content_hash"]) == 64 and d["source"] == "cluster" for d in docs.values())
    stats = manifest["sources"]["cluster"]
    assert stats["warnings"] == [] and stats["listed"]["Pod"] == 3 and stats["pods_with_logs"] == 2
    assert TOKEN not in json.dumps(manifest)


def test_namespaces_are_listed_one_by_one(tmp_path):
    with fake_cluster() as api:
        docs, _ = harvest(tmp_path, api, namespaces=["ml", "argo"], log_lines=0)
    paths = {r["path"] for r in api.requests}
    assert {"/api/v1/namespaces/ml/events", "/api/v1/namespaces/argo/events",
            "/apis/argoproj.io/v1alpha1/namespaces/ml/workflows", "/api/v1/nodes"} <= paths
    assert "/api/v1/events" not in paths and not any(p.endswith("/log") for p in paths)
    assert "cluster/Workflow/ml/distill-x7q2m" in docs


def test_a_refused_kind_is_skipped_with_a_warning(tmp_path):
    """A namespaced ServiceAccount is commonly refused Nodes: the rest of the harvest still counts."""
    with fake_cluster(forbidden=("/api/v1/nodes",)) as api:
        docs, manifest = harvest(tmp_path, api)
    assert not any(d.startswith("cluster/Node/") for d in docs) and "cluster/Pod/ml/" + POD in docs
    [warning] = manifest["sources"]["cluster"]["warnings"]
    assert warning.startswith("list nodes (/api/v1/nodes): 403 Forbidden") and "ClusterRole" in warning
    assert "Node" not in manifest["sources"]["cluster"]["listed"]


def test_everything_refused_or_unreachable_is_one_message(tmp_path):
    with fake_cluster(forbidden=("/api", "/apis")) as api:
        with pytest.raises(ValueError, match=rf"{api.url} .*refused every kind: list nodes .*403 Forbidden") as err:
            harvest(tmp_path, api)
    assert err.value.__cause__ is None and err.value.__context__ is None and TOKEN not in str(err.value)
    api_url = api.url  # the server is gone now: nothing listens on its port
    kubeconfig = write_kubeconfig(tmp_path / "config", api_url)
    with pytest.raises(ValueError, match=rf"cannot reach the Kubernetes API server {api_url}.*kubectl cluster-info"):
        run(HarvestConfig(out=tmp_path / "x", sources=["cluster"], kubeconfig=str(kubeconfig), timeout_s=3))
    with pytest.raises(ValueError, match="kubeconfig .* not found"):
        run(HarvestConfig(out=tmp_path / "x", sources=["cluster"], kubeconfig=str(tmp_path / "nope")))
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ a dump, Prometheus, incremental


def test_dump_gives_the_documents_of_the_live_cluster(tmp_path):
    with fake_cluster() as api:
        live, _ = harvest(tmp_path, api)
    out = tmp_path / "dump-kb"
    run(HarvestConfig(out=out, sources=["dump"], dump_dir=FIXTURES))
    dumped = docs_of(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"]["dump"]["skipped_secrets"] == 1
    assert set(dumped) == set(live)
    for doc_id, doc in dumped.items():
        assert doc["source"] == "dump"
        assert {**doc, "source": "cluster"} == live[doc_id], doc_id
    with pytest.raises(FileNotFoundError, match="dump_dir .* does not exist"):
        run(HarvestConfig(out=out, sources=["dump"], dump_dir=tmp_path / "nope"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pods.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad/pods.json is not JSON .*kubectl get"):
        run(HarvestConfig(out=out, sources=["dump"], dump_dir=bad))


def test_prometheus_queries_become_documents(tmp_path):
    with fake_cluster() as api:
        out = tmp_path / "kb"
        run(HarvestConfig(out=out, sources=["dump"], dump_dir=FIXTURES, prometheus_url=api.url,
                          prometheus_queries={"gpu_util": "gpu_util"}))
        doc = docs_of(out)["prometheus/gpu_util"]
        assert 'gpu="0"' in doc["text"] and doc["text"].endswith("= 97")
        assert doc["timestamp"] == "2026-12-01T10:00:00Z" and doc["doc_type"] == "metric"
        with pytest.raises(ValueError, match=r"refused query 'broken' .*parse error; fix prometheus_queries.broken"):
            run(HarvestConfig(out=out, sources=["dump"], dump_dir=FIXTURES, prometheus_url=api.url,
                              prometheus_queries={"broken": "rate("}))


def test_incremental_harvest_counts_changed_unchanged_removed(tmp_path):
    first = tmp_path / "first"
    run(HarvestConfig(out=first, sources=["dump"], dump_dir=FIXTURES))
    dump = tmp_path / "dump"
    shutil.copytree(FIXTURES, dump)
    (dump / "jobs.json").unlink()  # the Job is gone
    events = json.loads((dump / "events.json").read_text())
    events["items"][0]["count"] = 15  # the BackOff happened once more
    (dump / "events.json").write_text(json.dumps(events))
    second = tmp_path / "second"
    run(HarvestConfig(out=second, sources=["dump"], dump_dir=dump, previous=first))
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["counts"]["incremental"] == {"new": 0, "changed": 1, "unchanged": 8, "removed": 1}
    changes = json.loads((second / "changes.json").read_text())
    assert changes["changed"] == [f"cluster/Event/ml/{POD}.17f9a1c2d3e4b5a6"]
    assert changes["removed"] == ["cluster/Job/ml/nli-eval-28931"]
    # unchanged documents are the previous lines, byte for byte
    old_lines = set((first / "docs.jsonl").read_text().splitlines())
    new_lines = (second / "docs.jsonl").read_text().splitlines()
    assert sum(line in old_lines for line in new_lines) == 8
    with pytest.raises(FileNotFoundError, match="holds no docs.jsonl"):
        run(HarvestConfig(out=tmp_path / "third", sources=["dump"], dump_dir=dump, previous=tmp_path))
