"""`kubellm ui`'s guards: the token, the Host and Origin checks, and paths from the browser that would
leave the runs folder (`..`, absolute paths, symlinks)."""

from __future__ import annotations

import os
import socket

import pytest
from fastapi.testclient import TestClient

from tests.runfolders import make_run, write
from workflows.cli import main
from workflows.ui.app import create_app


@pytest.fixture
def root(tmp_path):
    make_run(tmp_path / "runs", "d1", phase="Succeeded", finished={"check-params": "Succeeded"})
    write(tmp_path / "secret.txt", "do not serve")
    return tmp_path / "runs"


def test_a_token_is_needed_on_every_request(root):
    client = TestClient(create_app(root, token="s3cret", loopback=False), base_url="http://10.0.0.5:8765")
    assert client.get("/").status_code == 401
    assert client.get("/api/runs/d1").status_code == 401
    wrong = TestClient(create_app(root, token="s3cret", loopback=False), base_url="http://10.0.0.5:8765")
    wrong.cookies.set("kubellm_ui_token", "wrong")
    assert wrong.get("/").status_code == 401
    assert wrong.get("/?token=guess", follow_redirects=False).status_code == 401
    assert client.get("/api/runs/d1", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    r = client.get("/runs/d1?token=s3cret&x=1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/runs/d1?x=1"  # the token leaves the URL
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    assert client.get("/runs/d1").status_code == 200  # the cookie from then on


def test_another_host_needs_a_token(monkeypatch):
    monkeypatch.delenv("KUBELLM_UI_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="--token"):
        main(["ui", "--host", "0.0.0.0"])


def test_a_loopback_ui_refuses_other_host_names(root):
    assert TestClient(create_app(root), base_url="http://evil.example:8765").get("/").status_code == 403
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765"):
        assert TestClient(create_app(root), base_url=f"http://{host}").get("/").status_code == 200, host


def test_a_cross_site_post_is_refused(root):
    client = TestClient(create_app(root), base_url="http://127.0.0.1:8765")
    r = client.post("/runs/d1/resume", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-site" in r.text
    assert client.post("/runs/d1/stop", headers={"Origin": "http://127.0.0.1:8765"}).status_code == 409  # passes the guard


@pytest.mark.parametrize("path", [
    "/runs/d1/files/../../secret.txt", "/runs/d1/files/%2e%2e/%2e%2e/secret.txt", "/runs/d1/files/..%2f..%2fsecret.txt",
    "/runs/d1/files//etc/passwd", "/runs/d1/files/%2fetc%2fpasswd", "/runs/..%2fsecret.txt/files/x",
    "/api/runs/d1/nodes/..%2f..%2f..%2fsecret.txt/log", "/api/runs/%2e%2e/nodes/x/log", "/compare?a=d1&b=..",
])
def test_paths_outside_the_runs_folder_are_refused(root, path):
    client = TestClient(create_app(root), base_url="http://127.0.0.1:8765")
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert "do not serve" not in r.text


def test_symlinks_out_of_the_runs_folder_are_refused(root, tmp_path):
    outside = make_run(tmp_path, "elsewhere", phase="Succeeded")
    os.symlink(outside, root / "link")
    os.symlink(tmp_path / "secret.txt", root / "d1" / "report.md")
    client = TestClient(create_app(root), base_url="http://127.0.0.1:8765")
    assert "resolves outside the runs folder" in client.get("/runs/link").text
    assert "link" not in [r["name"] for r in client.get("/api/runs").json()]
    r = client.get("/runs/d1/files/report.md")
    assert r.status_code == 404 and "resolves outside the run folder" in r.text
    assert "do not serve" not in client.get("/runs/d1").text


def test_kubellm_ui_refuses_bad_options_with_one_message(tmp_path):
    (tmp_path / "file").write_text("x")
    for argv, says in ((["--runs", str(tmp_path / "file")], "is a file, not a folder"),
                       (["--argo-server", "localhost:2746"], "give the server's URL"),
                       (["--port", "99999"], "give a port from 1 to 65535"),
                       (["--host", "0.0.0.0"], "give --token")):
        with pytest.raises(SystemExit) as e:
            main(["ui", "--runs", str(tmp_path / "runs"), *argv])
        assert says in str(e.value), (argv, e.value)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(SystemExit, match="cannot listen on 127.0.0.1"):
            main(["ui", "--runs", str(tmp_path / "runs"), "--port", str(busy.getsockname()[1])])
