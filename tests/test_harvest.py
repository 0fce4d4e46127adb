"""Tests for steps.harvest on real files: the installed kubernetes==28.1.0 client and the small
Markdown fixtures in tests/fixtures/harvest_docs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from steps import harvest
from steps._cli import main
from steps.harvest import TOPICS, HarvestConfig, run, validate_topics

FIXTURES = Path(__file__).parent / "fixtures" / "harvest_docs"
REPO = Path(__file__).resolve().parents[1]
BOILERPLATE = ("Gets the ", ":return:", ":rtype:", "noqa", "NOTE: This class is auto generated", "openapi-generator")


def read_docs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "docs.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    out = tmp_path_factory.mktemp("kb") / "kb"
    summary = run(HarvestConfig(out=out))
    return out, summary, read_docs(out)


@pytest.fixture(scope="module")
def by_id(kb):
    return {d["id"]: d for d in kb[2]}


# ------------------------------------------------------------------ the Kubernetes API reference


def test_k8s_counts_are_realistic(kb):
    out, summary, docs = kb
    stats = json.loads((out / "manifest.json").read_text())["sources"]["k8s-api"]
    assert stats["kubernetes_client_version"] == "28.1.0"
    assert stats["api_release"] == "1.28"
    # measured on kubernetes==28.1.0: 558 classes, 2,364 fields of which 1,757 carry a description
    assert stats["classes"] == 558
    assert stats["fields"] == 2364
    assert stats["fields_described"] == 1757
    assert 400_000 < stats["field_description_chars"] < 430_000
    assert stats["classes_group_unresolved"] == 0
    fields = [d for d in docs if d["doc_type"] == "field"]
    kinds = [d for d in docs if d["doc_type"] == "kind"]
    assert 1500 < len(fields) <= 1757  # the rest are shorter than min_chars=40
    assert len(kinds) == 558
    assert all(len(d["text"]) >= 40 and d["chars"] == len(d["text"]) for d in docs)
    assert {d["source"] for d in docs} == {"k8s-api-v1.28"}
    assert summary["docs"] == len(docs)


def test_known_documents_have_the_right_text(by_id):
    d = by_id["k8s/apps/v1/DeploymentSpec/replicas"]
    assert d["title"] == "Deployment.spec.replicas"
    assert d["text"].startswith("Number of desired pods.")
    assert (d["api_group"], d["version"], d["kind"], d["class"], d["field"], d["type"]) == (
        "apps", "v1", "Deployment", "DeploymentSpec", "replicas", "int")
    assert d["topic"] == "deployments-replicasets"
    assert d["file"] == "kubernetes/client/models/v1_deployment_spec.py"

    # JSON names, not python names
    d = by_id["k8s/apps/v1/DeploymentSpec/progressDeadlineSeconds"]
    assert d["title"] == "Deployment.spec.progressDeadlineSeconds" and "Defaults to 600s" in d["text"]

    d = by_id["k8s/core/v1/ServiceSpec/type"]
    assert "ClusterIP" in d["text"] and d["title"] == "Service.spec.type"
    assert d["topic"] == "services-networking"

    # a class used at several places keeps its own name as title and lists the places
    d = by_id["k8s/core/v1/Container/imagePullPolicy"]
    assert d["title"] == "Container.imagePullPolicy"
    assert "Pod.spec.containers.imagePullPolicy" in d["paths"] and d["kind"] == "Pod"
    assert d["topic"] == "pods-containers"

    d = by_id["k8s/autoscaling/v2/HorizontalPodAutoscalerSpec/minReplicas"]
    assert d["title"] == "HorizontalPodAutoscaler.spec.minReplicas" and d["topic"] == "autoscaling"
    assert "k8s/autoscaling/v1/HorizontalPodAutoscalerSpec/minReplicas" in by_id

    d = by_id["k8s/meta/v1/ObjectMeta/labels"]
    assert d["topic"] == "api-machinery" and d["kind"] is None and d["type"] == "dict(str, str)"

    assert by_id["k8s/batch/v1/CronJobSpec/schedule"]["topic"] == "jobs-cronjobs"
    assert by_id["k8s/networking.k8s.io/v1/IngressSpec/rules"]["topic"] == "ingress"
    assert by_id["k8s/networking.k8s.io/v1/NetworkPolicySpec/policyTypes"]["topic"] == "security-policies"
    assert by_id["k8s/core/v1/PodSecurityContext/runAsNonRoot"]["topic"] == "security-policies"
    assert by_id["k8s/core/v1/ServiceAccount/automountServiceAccountToken"]["topic"] == "namespaces-rbac"
    assert by_id["k8s/core/v1/Toleration/effect"]["topic"] == "scheduling"
    assert by_id["k8s/core/v1/ResourceRequirements/limits"]["topic"] == "resource-management"
    assert by_id["k8s/storage.k8s.io/v1/StorageClass/provisioner"]["topic"] == "storage-volumes"
    # a class that only a Deployment uses inherits the Deployment's topic
    assert by_id["k8s/apps/v1/RollingUpdateDeployment/maxSurge"]["topic"] == "deployments-replicasets"
    # same class name in two groups: two ids
    assert by_id["k8s/core/v1/Event/reason"]["api_group"] == "core"
    assert by_id["k8s/events.k8s.io/v1/Event/reason"]["api_group"] == "events.k8s.io"


def test_kind_documents(by_id):
    d = by_id["k8s/apps/v1/Deployment"]
    assert d["doc_type"] == "kind" and d["title"] == "Deployment" and d["field"] is None
    assert "apiVersion: apps/v1, kind: Deployment" in d["text"] and "spec (DeploymentSpec)" in d["text"]
    d = by_id["k8s/core/v1/Container"]
    # the description of PodSpec.containers tells what a Container is
    assert "List of containers belonging to the pod" in d["text"]
    assert by_id["k8s/apps/v1/DeploymentSpec"]["title"] == "Deployment.spec (DeploymentSpec)"


def test_no_generator_boilerplate(kb):
    for d in kb[2]:
        assert not any(b in d["text"] for b in BOILERPLATE), d["id"]


def test_every_topic_has_docs_and_each_doc_one_topic(kb):
    out, summary, docs = kb
    assert all(d["topic"] in TOPICS for d in docs)
    counts = summary["by_topic"]
    assert sum(counts.values()) == len(docs)
    assert all(counts[t] > 0 for t in TOPICS if t != "other"), counts
    topics = json.loads((out / "topics.json").read_text())
    assert topics["order"] == list(TOPICS)
    assert topics["topics"]["ingress"]["docs"] == counts["ingress"]
    assert topics["topics"]["ingress"]["description"] == TOPICS["ingress"]["description"]


def test_ids_unique_sorted_and_stable_across_runs(kb, tmp_path):
    out, _, docs = kb
    ids = [d["id"] for d in docs]
    assert len(ids) == len(set(ids)) and ids == sorted(ids)
    again = tmp_path / "again"
    run(HarvestConfig(out=again))
    assert (again / "docs.jsonl").read_bytes() == (out / "docs.jsonl").read_bytes()


def test_topic_filter(tmp_path):
    out = tmp_path / "kb"
    summary = run(HarvestConfig(out=out, topics=["ingress", "autoscaling"]))
    docs = read_docs(out)
    assert {d["topic"] for d in docs} == {"ingress", "autoscaling"}
    assert summary["by_topic"]["ingress"] > 20 and summary["by_topic"]["autoscaling"] > 50
    assert set(summary["by_topic"]) == {"ingress", "autoscaling"}
    topics = json.loads((out / "topics.json").read_text())
    assert topics["selected"] == ["ingress", "autoscaling"]
    assert topics["topics"]["pods-containers"]["selected"] is False
    assert topics["topics"]["pods-containers"]["docs"] == 0
    assert topics["topics"]["pods-containers"]["harvested"] > 100


def test_validate_topics():
    assert validate_topics("all") == list(TOPICS)
    assert validate_topics(None) == list(TOPICS)
    assert validate_topics("ingress, autoscaling") == ["ingress", "autoscaling"]
    assert validate_topics(["ingress", "ingress"]) == ["ingress"]
    with pytest.raises(ValueError) as e:
        validate_topics(["pods", "ingress"])
    msg = str(e.value)
    assert "unknown topic(s) 'pods'" in msg and "pods-containers" in msg and "topics=" in msg
    with pytest.raises(ValueError, match="empty"):
        validate_topics([])


def test_unknown_topic_fails_at_validation(tmp_path, capsys):
    with pytest.raises(ValidationError, match="valid topics are: api-machinery"):
        HarvestConfig(out=tmp_path / "kb", topics=["networking"])
    assert HarvestConfig(out=tmp_path / "kb", topics="ingress,scheduling").topics == ["ingress", "scheduling"]
    # the CLI refuses before any work starts: no output folder appears
    with pytest.raises(SystemExit) as e:
        main(HarvestConfig, run, argv=["--out", str(tmp_path / "kb"), "--topics", "nope"])
    assert "unknown topic(s) 'nope'" in str(e.value)
    assert not (tmp_path / "kb").exists()


# ------------------------------------------------------------------ a folder of Markdown


def test_folder_sections(tmp_path):
    out = tmp_path / "kb"
    summary = run(HarvestConfig(out=out, sources=["folder"], docs_dir=FIXTURES))
    docs = {d["id"]: d for d in read_docs(out)}
    assert list(docs) == [
        "folder/guides/probes.md",
        "folder/guides/probes.md#liveness-probes",
        "folder/guides/probes.md#liveness-probes-1",
        "folder/guides/probes.md#probes",
        "folder/guides/probes.md#readiness-gates",
        "folder/ingress/tls.md#host-names",
        "folder/ingress/tls.md#terminating-tls",
        "folder/misc/quotas.md#quotas-per-namespace",
        "folder/notes.txt",
    ]  # "## Tiny" is shorter than min_chars
    assert docs["folder/guides/probes.md"]["title"] == "Container probes"  # front matter title
    assert docs["folder/guides/probes.md#readiness-gates"]["title"] == "Readiness gates"
    live = docs["folder/guides/probes.md#liveness-probes"]
    assert live["title"] == "Liveness probes" and "# this comment is code, not a heading" in live["text"]
    assert live["source"] == "folder" and live["doc_type"] == "section" and live["file"] == "guides/probes.md"
    assert docs["folder/ingress/tls.md#terminating-tls"]["title"] == "Terminating TLS"  # setext heading
    assert docs["folder/ingress/tls.md#terminating-tls"]["topic"] == "ingress"  # from the folder name
    assert docs["folder/misc/quotas.md#quotas-per-namespace"]["topic"] == "resource-management"  # front matter
    assert docs["folder/notes.txt"]["title"] == "notes" and docs["folder/notes.txt"]["topic"] == "other"
    assert summary["by_source"] == {"folder": 9}

    # both sources together, filtered to one topic
    both = tmp_path / "both"
    run(HarvestConfig(out=both, sources=["k8s-api", "folder"], docs_dir=FIXTURES, topics=["ingress"]))
    rows = read_docs(both)
    assert {d["topic"] for d in rows} == {"ingress"}
    assert {d["source"] for d in rows} == {"k8s-api-v1.28", "folder"}


def test_folder_errors_name_the_file(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(FIXTURES, docs)
    bad = docs / "guides" / "latin1.md"
    bad.write_bytes("# Caf\xe9\n\nThis file was saved as Latin-1, not UTF-8.\n".encode("latin-1"))
    with pytest.raises(ValueError) as e:
        run(HarvestConfig(out=tmp_path / "kb", sources=["folder"], docs_dir=docs))
    assert str(bad) in str(e.value) and "not UTF-8" in str(e.value)
    assert isinstance(e.value.__cause__, UnicodeDecodeError)

    bad.write_text("---\ntopic: pods\n---\n# Title\n\nSome body text that is long enough to keep.\n")
    with pytest.raises(ValueError, match=r"latin1\.md: front matter topic 'pods' is unknown"):
        run(HarvestConfig(out=tmp_path / "kb", sources=["folder"], docs_dir=docs))

    bad.write_text("---\ntitle: [unclosed\n---\n# Title\n\nSome body text that is long enough to keep.\n")
    with pytest.raises(ValueError, match=r"latin1\.md: its front matter is not valid YAML"):
        run(HarvestConfig(out=tmp_path / "kb", sources=["folder"], docs_dir=docs))

    with pytest.raises(FileNotFoundError, match="docs_dir .*nowhere does not exist"):
        run(HarvestConfig(out=tmp_path / "kb", sources=["folder"], docs_dir=tmp_path / "nowhere"))
    with pytest.raises(ValidationError, match="docs_dir is not set"):
        HarvestConfig(out=tmp_path / "kb", sources=["folder"])
    assert not (tmp_path / "kb").exists()


# ------------------------------------------------------------------ output folder and manifest


def test_output_is_replaced_atomically(tmp_path):
    out = tmp_path / "kb"
    run(HarvestConfig(out=out, sources=["folder"], docs_dir=FIXTURES))
    first = (out / "docs.jsonl").read_bytes()
    (out / "stale.txt").write_text("from an older run")
    run(HarvestConfig(out=out, sources=["folder"], docs_dir=FIXTURES, topics=["ingress"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb"]  # no temp or old folder left
    assert not (out / "stale.txt").exists()
    assert len(read_docs(out)) == 2
    # a failing run leaves the previous output as it was
    with pytest.raises(FileNotFoundError):
        run(HarvestConfig(out=out, sources=["folder"], docs_dir=tmp_path / "nowhere"))
    assert len(read_docs(out)) == 2 and (out / "docs.jsonl").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb"]


def test_manifest(kb):
    out, summary, docs = kb
    m = json.loads((out / "manifest.json").read_text())
    assert m["step"] == "harvest"
    assert m["config"]["out"] == str(out) and m["config"]["topics"] == ["all"] and m["config"]["min_chars"] == 40
    assert m["counts"]["docs"] == len(docs) == summary["docs"]
    assert m["counts"]["by_doc_type"]["kind"] == 558
    assert m["counts"]["skipped_too_short"] > 0
    assert set(m["files"]) == {"docs.jsonl", "topics.json"}
    k8s = m["sources"]["k8s-api"]
    assert k8s["how"] == "installed" and Path(k8s["read_from"], "client", "models").is_dir()
    assert m["timings_s"]["total"] >= m["timings_s"]["k8s_api"] > 0
    assert m["versions"]["pydantic"]


# ------------------------------------------------------------------ where the client is read from


def _installed_package() -> Path:
    return Path(harvest.load_k8s_files().origin)


def test_reads_a_wheel_and_a_folder_without_importing(tmp_path):
    pkg = _installed_package()
    names = ["client/models/v1_deployment.py", "client/models/v1_deployment_spec.py",
             "client/models/v1_object_meta.py", "client/models/v1_label_selector.py",
             "client/api/apps_v1_api.py"]
    wheel = tmp_path / "kubernetes-28.1.0-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for n in names:
            zf.write(pkg / n, f"kubernetes/{n}")
        zf.writestr("kubernetes-28.1.0.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: kubernetes\nVersion: 28.1.0\n")
    out = tmp_path / "kb"
    imported_before = "kubernetes" in sys.modules
    run(HarvestConfig(out=out, k8s_source=wheel))
    docs = {d["id"]: d for d in read_docs(out)}
    assert docs["k8s/apps/v1/DeploymentSpec/replicas"]["title"] == "Deployment.spec.replicas"
    assert {d["class"] for d in docs.values()} == {"Deployment", "DeploymentSpec", "ObjectMeta", "LabelSelector"}
    k8s = json.loads((out / "manifest.json").read_text())["sources"]["k8s-api"]
    assert (k8s["how"], k8s["kubernetes_client_version"], k8s["read_from"]) == ("wheel", "28.1.0", str(wheel))

    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpacked)
    run(HarvestConfig(out=out, k8s_source=unpacked))
    assert {d["id"] for d in read_docs(out)} == set(docs)
    k8s = json.loads((out / "manifest.json").read_text())["sources"]["k8s-api"]
    assert (k8s["how"], k8s["kubernetes_client_version"]) == ("folder", "28.1.0")
    assert ("kubernetes" in sys.modules) == imported_before  # parsed as text, never imported

    with pytest.raises(ValueError, match="not-a-wheel.whl is neither a folder nor a wheel"):
        (tmp_path / "not-a-wheel.whl").write_text("hello")
        run(HarvestConfig(out=out, k8s_source=tmp_path / "not-a-wheel.whl"))
    with pytest.raises(FileNotFoundError, match="holds no kubernetes/client/models"):
        run(HarvestConfig(out=out, k8s_source=tmp_path / "unpacked" / "kubernetes-28.1.0.dist-info"))


def test_cli_help_is_fast_and_light():
    code = ("import sys, runpy; sys.argv = ['harvest', '--help']\n"
            "try:\n    runpy.run_module('steps.harvest', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('kubernetes', 'torch', 'transformers', 'yaml') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "python -m steps.harvest --out runs/kb" in res.stdout and "--docs-dir" in res.stdout
    assert "HEAVY []" in res.stdout
