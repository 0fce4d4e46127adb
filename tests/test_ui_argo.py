"""`kubellm ui`'s Argo Server client and pages, against a loopback stand-in of the server's API
(tests/argoserver.py): list, watch, logs, submit the compiled workflow, stop, retry, and a server
that is not there."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from tests.argoserver import ArgoServer, workflow
from workflows.ui.app import create_app
from workflows.ui.argo import Argo, ArgoError, fnv32a, pod_name

TOKEN = "eyJhbGciOi.secret-token"
RECORDED = Path(__file__).parent / "fixtures" / "argo_recorded"  # status written by a real controller


def recorded(name: str) -> dict:
    wf = yaml.safe_load((RECORDED / f"{name}.yaml").read_text())
    wf["metadata"].setdefault("namespace", "argo")
    return wf


@pytest.fixture
def server():
    with ArgoServer(token=f"Bearer {TOKEN}") as s:
        s.add(workflow("distill-x7k2p", "Running"))
        s.add(workflow("nli-abcde", "Failed", pipeline="nli"))
        s.logs[s.pod("distill-x7k2p", "harvest")] = "".join(f"harvest row {i}\n" for i in range(500))
        yield s


@pytest.fixture
def client(server, tmp_path):
    return TestClient(create_app(tmp_path / "runs", argo=Argo(server.url, "argo", TOKEN)), base_url="http://127.0.0.1")


def test_pod_names_as_argo_makes_them():
    assert [fnv32a(s) for s in ("hello", "world", "🚀✨🔥")] == [1335831723, 933488787, 2133319838]
    wf = {"metadata": {"name": "wfname"}}
    assert pod_name(wf, {"name": "nodename", "templateName": "templatename", "id": "n1"}) == \
        f"wfname-templatename-{fnv32a('nodename')}"
    assert pod_name({"metadata": {"name": "wfname", "annotations": {
        "workflows.argoproj.io/pod-name-format": "v1"}}}, {"name": "x", "id": "wfname-123"}) == "wfname-123"


def test_list_and_watch(client, server):
    page = client.get("/argo").text
    assert 'href="/argo/distill-x7k2p"' in page and 'href="/argo/nli-abcde"' in page
    wf = client.get("/api/argo/distill-x7k2p").json()
    assert wf["phase"] == "Running" and wf["pipeline"] == "distill" and wf["parameters"]["steps"] == "60"
    nodes = {n["name"]: n for n in wf["nodes"]}
    assert set(nodes) == {"check-params", "harvest", "evaluate"}  # pods and skipped tasks, not the DAG
    assert nodes["harvest"]["progress"] == "40/120" and nodes["harvest"]["pod"].startswith("distill-x7k2p-harvest-")
    assert nodes["evaluate"]["pod"] is None
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in server.requests)
    log = client.get(f"/api/argo/distill-x7k2p/log?pod={nodes['harvest']['pod']}&tail=3").text
    assert log.splitlines() == ["harvest row 497", "harvest row 498", "harvest row 499"]
    last = server.requests[-1]
    assert last["query"]["logOptions.container"] == ["main"] and last["query"]["logOptions.tailLines"] == ["3"]


def test_the_token_is_never_shown(client, server):
    for path in ("/argo", "/argo/distill-x7k2p", "/argo/missing", "/new/distill"):
        assert TOKEN not in client.get(path).text
    assert TOKEN not in repr(Argo(server.url, "argo", TOKEN))
    bad = TestClient(create_app(server and __import__("pathlib").Path("/nonexistent"),
                                argo=Argo(server.url, "argo", "wrong")), base_url="http://127.0.0.1")
    r = bad.get("/argo")
    assert "401" in r.text and "ARGO_TOKEN" in r.text and "wrong" not in r.text


def test_stop_and_retry(client, server):
    assert client.post("/argo/distill-x7k2p/stop", follow_redirects=False).status_code == 303
    assert server.workflows["distill-x7k2p"]["status"]["phase"] == "Failed"
    stop = [r for r in server.requests if r["path"].endswith("/stop")][0]
    assert stop["method"] == "PUT" and stop["body"] == {"name": "distill-x7k2p", "namespace": "argo"}
    assert client.post("/argo/distill-x7k2p/retry", follow_redirects=False).status_code == 303
    assert server.workflows["distill-x7k2p"]["status"]["phase"] == "Running"
    r = client.post("/argo/distill-x7k2p/retry")  # a running workflow cannot be retried: the server's word
    assert r.status_code == 502 and "must be Failed/Error to retry" in r.text
    assert client.post("/argo/distill-x7k2p/delete").status_code == 404


def test_submit_the_compiled_workflow(client, server):
    r = client.post("/new/distill", data={"target": "argo", "store": "pvc", "steps": "20"}, follow_redirects=False)
    assert r.status_code == 303, r.text[-2000:]
    name = r.headers["location"].removeprefix("/argo/")
    sent = [q for q in server.requests if q["method"] == "POST"][0]["body"]
    assert sent["namespace"] == "argo" and sent["workflow"]["metadata"]["generateName"] == "distill-"
    params = {p["name"]: p.get("value") for p in sent["workflow"]["spec"]["arguments"]["parameters"]}
    assert params["steps"] == "20"
    assert any(v.get("persistentVolumeClaim") for v in sent["workflow"]["spec"].get("volumes") or [])  # the pvc store
    assert server.workflows[name]["status"]["phase"] == "Pending"


def test_submit_refuses_bad_parameters_beside_the_field(client, server):
    r = client.post("/new/distill", data={"target": "argo", "steps": "0"})
    assert r.status_code == 422 and "greater than or equal to 1" in r.text
    assert not [q for q in server.requests if q["method"] == "POST"]


def test_a_stopped_server_gives_a_clear_message_and_loses_nothing(tmp_path):
    from tests.runfolders import make_run

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    make_run(tmp_path / "runs", "local-run", phase="Succeeded")
    client = TestClient(create_app(tmp_path / "runs", argo=Argo(f"http://127.0.0.1:{port}", "argo", TOKEN,
                                                                timeout=2)), base_url="http://127.0.0.1")
    page = client.get("/argo")
    assert page.status_code == 200 and "cannot reach the Argo Server" in page.text and "nothing was changed" in page.text
    r = client.get("/argo/distill-x7k2p")
    assert r.status_code == 502 and "cannot reach the Argo Server" in r.text
    assert client.get("/api/argo/distill-x7k2p").json()["error"].startswith("cannot reach the Argo Server")
    assert client.post("/argo/distill-x7k2p/stop").status_code == 502
    r = client.post("/new/distill", data={"target": "argo", "steps": "20"})
    assert r.status_code == 502 and "cannot reach" in r.text and 'value="20"' in r.text  # the form stays filled
    assert [x["name"] for x in client.get("/api/runs").json()] == ["local-run"]  # local runs unaffected
    with pytest.raises(ArgoError, match="connection refused"):
        Argo(f"http://127.0.0.1:{port}").list()


def test_workflows_as_a_real_controller_left_them(tmp_path):
    """Nested DAGs, suspend nodes and v2 pod names (k3d), retries and an omitted task (minikube)."""
    with ArgoServer(token=f"Bearer {TOKEN}") as server:
        failed = server.add(recorded("fail-two-nested-dag-suspend"))
        running = server.add(recorded("retry-with-dags"))
        client = TestClient(create_app(tmp_path / "runs", argo=Argo(server.url, "argo", TOKEN)),
                            base_url="http://127.0.0.1")
        page = client.get("/argo").text
        assert 'href="/argo/fail-two-nested-dag-suspend"' in page and 'href="/argo/retry-with-dags"' in page

        wf = client.get("/api/argo/fail-two-nested-dag-suspend").json()
        assert wf["phase"] == "Failed" and wf["progress"] == "11/12"
        want = {n["id"]: n for n in failed["status"]["nodes"].values() if n["type"] in ("Pod", "Suspend")}
        got = {n["id"]: n for n in wf["nodes"]}
        assert set(got) == set(want)  # no DAG nodes; every pod and approval step
        for nid, n in want.items():
            assert got[nid]["phase"] == n["phase"] and got[nid]["name"] == n["displayName"]
            if n["type"] == "Pod":  # v2: workflow-template-fnv32a(node name)
                assert got[nid]["pod"] == f"fail-two-nested-dag-suspend-{n['templateName']}-{fnv32a(n['name'])}"
            else:
                assert got[nid]["pod"] is None
        assert [n["started"] for n in wf["nodes"]] == sorted(n["started"] for n in wf["nodes"])
        html = client.get("/argo/fail-two-nested-dag-suspend").text
        assert all(n["displayName"] in html for n in want.values())

        wf = client.get("/api/argo/retry-with-dags").json()
        by_name = {n["name"]: n for n in wf["nodes"]}
        assert set(by_name) == {"success1(0)", "fail(0)", "fail(1)", "success2"}  # attempts, not Retry parents
        assert by_name["fail(1)"]["message"] == "failed with exit code 1" and by_name["success2"]["phase"] == "Omitted"
        assert by_name["fail(0)"]["duration_s"] == 4.0  # 00:26:37 -> 00:26:41
        pod = by_name["fail(1)"]["pod"]
        assert pod == f"retry-with-dags-fail-{fnv32a('retry-with-dags.sub-dag1.fail(1)')}"
        server.logs[pod] = "sh: exit 1\n"
        assert client.get(f"/api/argo/retry-with-dags/log?pod={pod}").text == "sh: exit 1"
        assert running["status"]["phase"] == "Running"

        assert client.post("/argo/fail-two-nested-dag-suspend/retry", follow_redirects=False).status_code == 303
        assert server.workflows["fail-two-nested-dag-suspend"]["status"]["phase"] == "Running"
