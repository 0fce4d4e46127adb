"""The rag workflow as rendered: its shape and wiring, and parameters refused before anything starts
(snapshot and lint: test_rendered.py; the run itself: test_e2e_rag.py)."""

from __future__ import annotations

import pytest

from workflows import cli, rag


def tasks(doc: dict) -> dict[str, dict]:
    main = next(t for t in doc["spec"]["templates"] if t["name"] == "main")
    return {t["name"]: t for t in main["dag"]["tasks"]}


def test_dag_runs_harvest_index_serve_answer_evaluate_in_order():
    t = tasks(cli.compile_doc("rag", "s3", {}))
    assert set(t) == {"check-params", "choose-model", "prepare-model", "harvest", "index", "facts", "retrieval-eval", "serve",
                      "answer-closed", "answer-rag", "judge", "evaluate"}
    deps = {k: set((v.get("depends") or "").replace("(", "").replace(")", "").replace("&&", " ").split()) for k, v in t.items()}
    assert deps["index"] == {"harvest"} and deps["facts"] == {"harvest"}
    assert deps["choose-model"] == {"check-params"} and deps["prepare-model"] == {"choose-model"}
    assert deps["answer-rag"] == {"serve", "index", "facts"}
    assert deps["judge"] == {"answer-rag"}
    assert deps["evaluate"] == {"answer-closed", "judge", "retrieval-eval"}


def test_the_rag_answer_node_retrieves_and_the_harvest_reads_the_cluster_as_its_own_service_account():
    doc = cli.compile_doc("rag", "s3", {})
    tpl = {t["name"]: t for t in doc["spec"]["templates"]}
    args = tpl["answer-rag"]["container"]["args"]
    assert args[args.index("--rag") + 1] == "/in/index" and "--top-k" in args
    assert "--rag" not in tpl["answer-closed"]["container"]["args"]
    assert tpl["harvest"]["serviceAccountName"] == rag.HARVEST_SA
    assert doc["spec"]["serviceAccountName"] == "kubellm-workflow"  # every other pod keeps the workflow's


def test_model_auto_is_resolved_by_the_choose_node_and_used_everywhere():
    doc = cli.compile_doc("rag", "s3", {"model": "auto"})
    tpl = {t["name"]: t for t in doc["spec"]["templates"]}
    args = tpl["choose-model"]["container"]["args"]
    assert args[args.index("--pick") + 1] == "{{workflow.parameters.model}}"
    assert tpl["choose-model"]["serviceAccountName"] == rag.HARVEST_SA
    t = tasks(doc)
    chosen = "{{tasks.choose-model.outputs.parameters.model}}"
    for name in ("prepare-model", "answer-closed", "answer-rag", "judge"):
        vals = {p["name"]: p.get("value") for p in t[name]["arguments"].get("parameters", [])}
        assert vals["model"] == chosen, name
    assert {p["name"]: p["value"] for p in t["serve"]["arguments"]["parameters"]}["served-name"] == chosen
    rag.validate_params({"model": "auto"})


def test_cron_refreshes_the_index_incrementally_at_a_fixed_key():
    doc = cli.compile_cron("rag", "s3", {}, "*/30 * * * *")
    spec = doc["spec"]
    assert spec["schedules"] == ["*/30 * * * *"] and spec["concurrencyPolicy"] == "Forbid"
    tpl = {t["name"]: t for t in spec["workflowSpec"]["templates"]}
    args = tpl["index"]["container"]["args"]
    assert args[args.index("--previous") + 1] == "/in/previous" and "--previous-missing-ok" in args
    prev = next(a for a in tpl["index"]["inputs"]["artifacts"] if a["name"] == "previous")
    out = tpl["index"]["outputs"]["artifacts"][0]
    assert prev["optional"] is True and prev["s3"]["key"] == out["s3"]["key"] == "rag/current/index"
    assert "cluster" in spec["workflowSpec"]["arguments"]["parameters"][0]["value"]


@pytest.mark.parametrize("params,match", [
    ({"sources": "cluster"}, "must include k8s-api"),
    ({"sources": "k8s-api,etcd"}, r"\['etcd'\]"),
    ({"sources": "k8s-api,dump"}, "dump-dir is empty"),
    ({"judge": "qwen2.5-7b"}, "needs -p judge-url"),
    ({"judge-url": "ftp://x"}, "judge-url"),
    ({"top-k": "0"}, "top-k"),
    ({"retriever": "sparse"}, "retriever"),
    ({"topics": "nonsense"}, "nonsense"),
    ({"model": "/no/such/folder"}, "parameter model"),
])
def test_bad_parameters_are_refused_before_anything_starts(params, match):
    with pytest.raises(ValueError, match=match):
        rag.validate_params(params)


def test_local_runs_refuse_a_cluster_source_without_a_kubeconfig_and_a_missing_dump(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(SystemExit, match="rag: sources includes cluster, but no usable Kubernetes configuration"):
        cli.main(["run", "rag", "-p", "sources=k8s-api,cluster", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()  # refused before anything starts
    # compiling for a cluster needs no kubeconfig here: the harvest pod uses its ServiceAccount
    cli.compile_doc("rag", "s3", {"sources": "k8s-api,cluster"})
    with pytest.raises(ValueError, match="dump-dir '/no/dump' is not a folder on this machine"):
        rag.check_local_run({"sources": "k8s-api,dump", "dump-dir": "/no/dump"})
    (tmp_path / "dump").mkdir()
    rag.check_local_run({"sources": "k8s-api,dump", "dump-dir": str(tmp_path / "dump")})
