"""`kubellm ui`: the runs list, the watch page's JSON, node logs, results and compare, read from run
folders shaped as the local runner writes them (tests/runfolders.py)."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from tests.runfolders import held_elsewhere, make_run, write
from workflows.ui.app import create_app

FINISHED = {"check-params": "Succeeded", "prepare-student": "Succeeded", "harvest": "Succeeded", "evaluate": "Succeeded"}


@pytest.fixture
def client(tmp_path):
    return TestClient(create_app(tmp_path / "runs"), base_url="http://127.0.0.1:8765")


@pytest.fixture
def root(tmp_path):
    return tmp_path / "runs"


def report(folder, fact_mean=0.25):
    write(folder / "report.md", "# Distillation report\n\n**Verdict:** the fine-tuned student is better\n\n"
                                "| split | diff |\n|---|---|\n| trained | +0.25 |\n\n![scores](report.png)\n\n"
                                "<script>alert('x')</script>\n")
    write(folder / "report.json", {"verdict": "the fine-tuned student is better", "facts": {"by_split": {
        "paraphrase": {"finetuned_minus_baseline": {"n": 12, "mean": fact_mean, "ci95": [0.05, 0.45]}}}},
        "examples": [{"mean": 1.0, "ci95": [0, 1]}]})
    (folder / "report.png").write_bytes(b"\x89PNG\r\n\x1a\n")


def test_runs_list_shows_every_run_with_status_and_metrics(client, root):
    done = make_run(root, "done", finished=FINISHED, phase="Succeeded", started=time.time() - 3600,
                    outputs={"evaluate": {"fact_diff": "0.25", "diff": "0.031"}})
    report(done)
    make_run(root, "broken", finished={"check-params": "Failed"}, phase="Failed", message="check-params: exit 1",
             started=time.time() - 1800)
    make_run(root, "stopped", finished={"check-params": "Succeeded"}, phase="Failed", message="interrupted")
    (root / "not-a-run").mkdir()
    rows = {r["name"]: r for r in client.get("/api/runs").json()}
    assert set(rows) == {"done", "broken", "stopped"}
    assert rows["done"]["status"] == "Succeeded" and rows["done"]["pipeline"] == "distill"
    assert rows["done"]["metrics"] == {"fact_diff": 0.25, "diff": 0.031}
    assert rows["done"]["verdict"] == "the fine-tuned student is better"
    assert rows["broken"]["status"] == "Failed" and "exit 1" in rows["broken"]["message"]
    assert rows["stopped"]["status"] == "Stopped"
    assert rows["done"]["duration_s"] > 100
    page = client.get("/")
    assert page.status_code == 200 and "fact_diff 0.250" in page.text and 'href="/runs/broken"' in page.text


def test_a_run_in_progress_shows_running_nodes_with_progress(client, root):
    folder = make_run(root, "live", finished={"check-params": "Succeeded"}, running=["harvest"],
                      progress={"harvest": "3/10"})
    assert client.get("/api/runs/live").json()["status"] == "Incomplete"  # nobody holds the folder
    with held_elsewhere(folder) as proc:
        run = client.get("/api/runs/live").json()
    assert run["status"] == "Running"  # a runner holds the folder's lock
    assert run["message"] == f"started outside the UI: `kubellm run`, pid {proc.pid}" and run["can_stop"]
    nodes = {n["id"]: n for n in run["nodes"]}
    assert list(nodes)[:3] == ["check-params", "prepare-student", "harvest"]  # the DAG's order
    assert nodes["check-params"]["phase"] == "Succeeded" and nodes["check-params"]["duration_s"] == 30.0
    assert nodes["harvest"]["phase"] == "Running" and nodes["harvest"]["progress"] == "3/10"
    assert 4 <= nodes["harvest"]["duration_s"] < 60
    assert nodes["evaluate"]["phase"] == "Pending" and nodes["generate"]["depends"] == "harvest && serve && memo-keys"
    assert not run["can_resume"]  # someone else's runner works on it


def test_a_resumed_run_counts_from_its_first_start_over_all_its_invocations(client, root):
    folder = make_run(root, "resumed", finished={"check-params": "Succeeded"}, phase="Succeeded")
    run = json.loads((folder / "run.json").read_text())
    first = {"started": "2026-12-01T10:00:00+00:00", "finished": "2026-12-01T10:05:00+00:00", "wall_s": 300.0,
             "phase": "Failed", "message": "interrupted"}
    last = {k: run[k] for k in ("started", "finished", "wall_s", "phase", "message")}
    write(folder / "run.json", run | {"invocations": [first, last], "total_wall_s": 300.0 + run["wall_s"]})
    shown = client.get("/api/runs/resumed").json()
    assert shown["started"] == first["started"] and shown["duration_s"] == 300.0 + run["wall_s"]
    assert shown["invocations"] == 2
    assert '<span id="invocations">2</span> starts' in client.get("/runs/resumed").text


def test_a_run_without_an_evaluate_node_is_summed_up_by_its_rows(client, root):
    make_run(root, "exp", "experiment", phase="Succeeded",
             finished={"plan": "Succeeded", "model.0.study.0.query": "Succeeded",
                       "model.0.study.0.extract": "Succeeded", "collect": "Succeeded"},
             outputs={"model.0.study.0.query": {"rows": "10", "failed": "1"},
                      "model.0.study.0.extract": {"rows": "9", "failed": "2"}, "collect": {"failed": "3"}})
    assert client.get("/api/runs/exp").json()["metrics"] == {"rows": 19.0, "failed": 3.0}


def test_fanned_out_nodes_follow_their_task(client, root):
    make_run(root, "fan", pipeline="experiment", finished={"plan": "Succeeded", "model.0": "Succeeded",
                                                           "model.10": "Succeeded", "model.2": "Failed"},
             phase="Failed")
    ids = [n["id"] for n in client.get("/api/runs/fan").json()["nodes"]]
    assert ids.index("model.0") < ids.index("model.2") < ids.index("model.10")


def test_node_log_tail(client, root):
    make_run(root, "live", running=["harvest"])
    text = client.get("/api/runs/live/nodes/harvest/log?tail=5").text
    assert text.splitlines() == [f"line {i}" for i in range(295, 300)]
    assert client.get("/api/runs/live/nodes/nope/log").status_code == 404


def test_results_render_the_report_safely_with_images_and_csvs(client, root):
    folder = make_run(root, "done", finished=FINISHED, phase="Succeeded")
    report(folder)
    write(folder / "s3" / "demo" / "smollm2" / "20261203" / "smollm2_study1_structured.csv", "a,b\n1,2\n")
    page = client.get("/runs/done").text
    assert "<h1>Distillation report</h1>" in page and "<td>+0.25</td>" in page
    assert "<script>alert" not in page and "&lt;script&gt;" in page  # raw HTML in a report stays text
    assert 'src="/runs/done/files/report.png"' in page
    assert "s3/demo/smollm2/20261203/smollm2_study1_structured.csv" in page
    csv = client.get("/runs/done/files/s3/demo/smollm2/20261203/smollm2_study1_structured.csv")
    assert csv.text == "a,b\n1,2\n" and csv.headers["content-security-policy"] == "sandbox"
    assert client.get("/runs/done/files/report.png").content.startswith(b"\x89PNG")


def test_compare_two_runs(client, root):
    a = make_run(root, "a", finished=FINISHED, phase="Succeeded", outputs={"evaluate": {"fact_diff": "0.25"}})
    b = make_run(root, "b", finished=FINISHED, phase="Succeeded", params={"steps": "120", "lora-r": "8"},
                 outputs={"evaluate": {"fact_diff": "0.4"}})
    report(a)
    report(b, fact_mean=0.4)
    cmp = client.get("/compare?a=a&b=b")
    assert cmp.status_code == 200
    text = cmp.text
    assert "<td>steps</td><td>60</td><td>120</td>" in text and "<td>lora-r</td>" in text
    assert "<td>student</td>" not in text  # the same in both
    assert "facts.by_split.paraphrase.finetuned_minus_baseline" in text
    assert "+0.250 [+0.050, +0.450]" in text and "+0.400 [+0.050, +0.450]" in text
    assert "evaluate.fact_diff" in text and "examples" not in text.split('id="estimates"')[1]
    assert "evaluate.fact_diff</td><td>0.25</td><td>0.4</td><td>+0.15</td>" in text  # B - A
    assert '<option selected>b</option>' in client.get("/compare?a=a").text  # B: another run than A
    picked = client.get("/compare?run=b&run=a").text  # the runs list's checkboxes, newest first
    assert picked.index('href="/runs/a"') < picked.index('href="/runs/b"')
    r = client.get("/compare?run=a")
    assert r.status_code == 400 and "pick exactly two runs to compare (1 picked)" in r.text


def test_a_folder_that_is_not_a_run_gets_a_clear_message(client, root):
    (root / "photos").mkdir(parents=True)
    r = client.get("/runs/photos")
    assert r.status_code == 404 and "is not a run folder" in r.text
    assert client.get("/api/runs/photos").json()["error"].endswith("(no workflow.json, workflow.yaml, run.json or ui.json)")
    assert "is not a run folder" in client.get("/runs/missing").text


def test_an_unreadable_run_is_listed_not_hidden(client, root):
    folder = make_run(root, "odd", phase="Succeeded")
    (folder / "run.json").write_text("{not json")
    (folder / "workflow.json").write_text(json.dumps({"created": "yesterday"}))
    rows = client.get("/api/runs").json()
    assert [r["name"] for r in rows] == ["odd"]
