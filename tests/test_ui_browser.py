"""`kubellm ui` in a real browser: Debian's chromium, headless, driven by Playwright (no browser download).

A tiny `nli` run is started from the form, watched while its nodes change phase, stopped with the Stop
button (SIGINT to the runner, as Ctrl-C), resumed, and its report opened; a second run with one
parameter changed is compared with it. Bad input is shown in the page. The runs are real: the local
runner, the real steps and models, the UI served by uvicorn on a loopback port.

The second run is also the end-to-end check of `nli`: its report, the published version, the service
rolled out on the local cluster and answering /health, /model/info and /predict.

Screenshots go to test-artifacts/ui/ (KUBELLM_TEST_ARTIFACTS overrides the folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, port_free

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("KUBELLM_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "ui"
TINY = {"max-pairs": "45", "steps": "3", "batch-size": "2", "lora-layers": "2", "eval-limit": "12", "max-length": "192"}


def chromium() -> str:
    path = os.environ.get("KUBELLM_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail("no chromium: `make test` installs Debian's package when run as root; otherwise "
                    "`sudo apt-get install chromium`, or set KUBELLM_CHROMIUM=/path/to/chromium")
    return path


class Served:
    """The UI app under uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Served":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium(), headless=True,
                               args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield b
        b.close()


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def phases(page) -> dict[str, str]:
    """node -> the phase its row shows now (the page reloads itself when the run starts or ends)."""
    from playwright.sync_api import Error

    for _ in range(50):
        try:
            return page.eval_on_selector_all(
                "#nodes tbody tr[data-node]",
                "rows => Object.fromEntries(rows.map(r => [r.dataset.node, r.querySelector('.phase').textContent]))")
        except Error:  # the page was navigating
            time.sleep(0.2)
    raise AssertionError("the run page kept reloading")


def watch(page, until, timeout: float, seen: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Poll the page's node table (the page redraws itself) until `until(phases)`; every phase each
    node showed is appended to `seen`."""
    deadline = time.monotonic() + timeout
    while True:
        now = phases(page)
        if seen is not None:
            for node, ph in now.items():
                if not seen.setdefault(node, []) or seen[node][-1] != ph:
                    seen[node].append(ph)
        if until(now):
            return now
        assert time.monotonic() < deadline, f"timed out; the page shows {now}, status {page.text_content('#status')}"
        time.sleep(0.4)


def start_from_form(page, base: str, name: str, values: dict[str, str], port: int) -> None:
    page.goto(f"{base}/new/nli")
    page.fill("#run_name", name)
    page.fill("#opt-serve_port", str(port))
    for k, v in values.items():
        page.fill(f"#p-{k}", v)
    page.click("#params-form button[type=submit]")
    page.wait_for_url(f"{base}/runs/{name}")


def wait_status(page, status: str, timeout: float) -> None:
    page.wait_for_function(f"document.getElementById('status').textContent === {status!r}", timeout=timeout * 1000)


def served_as_run_says(out: Path, cache_dir: Path, port: int) -> None:
    """The end of a `kubellm run nli` (here started by the UI): trained, evaluated, published, rolled
    out on the local cluster and smoke-tested; the service still serves the trained version."""
    import httpx

    assert f"serving: kubellm-nli (model version {out.name}) at http://127.0.0.1:{port}" in \
        (out / "ui-log.txt").read_text()
    report = json.loads((out / "report.json").read_text())
    test_pairs = len((out / "nodes/nli-data/artifacts/data/test.jsonl").read_text().splitlines())
    assert report["n"] == min(12, test_pairs) and report["split"] == "test" and report["n"] > 0
    smoke = json.loads((out / "nodes/smoke/artifacts/smoke/smoke.json").read_text())
    assert smoke["ok"] and smoke["reached_as"] == f"http://127.0.0.1:{port}"
    published = cache_dir / "nli" / out.name
    assert (published / "adapter_config.json").exists()
    assert os.readlink(cache_dir / "nli" / "current") == out.name
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/health").json() == {"status": "ok", "model_loaded": True, "device": "cpu", "error": None}
    info = httpx.get(f"{base}/model/info").json()
    assert info["metrics"]["version"] == out.name
    assert info["metrics"]["accuracy"] == report["finetuned"]["accuracy"]
    assert info["training_data"] == "k8s-reference"
    pair = smoke["predict"]["pair"]
    got = httpx.post(f"{base}/predict", json={"premise": pair["premise"], "hypothesis": pair["hypothesis"]}).json()
    assert got["label"] == pair["expected"]["label"]
    assert abs(sum(got["scores"].values()) - 1) < 1e-6


@pytest.mark.slow
def test_start_watch_stop_resume_report_and_compare_in_chromium(tmp_path, cache_dir, browser):
    from workflows.ui import control
    from workflows.ui.app import create_app

    runs = tmp_path / "runs"
    runs.mkdir()
    port = free_port()
    env = {**os.environ, "KUBELLM_CACHE": str(cache_dir)}
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        with Served(create_app(runs, cwd=ROOT)) as ui:
            # invalid values: each error beside its field, nothing started, what was typed kept
            page.goto(f"{ui.url}/new/nli")
            page.fill("#run_name", "tiny-a")
            page.fill("#p-steps", "three")
            page.fill("#p-eval-limit", "-1")
            page.click("#params-form button[type=submit]")
            assert "steps" in page.text_content("#field-steps .error")
            assert "eval-limit" in page.text_content("#field-eval-limit .error")
            assert page.input_value("#p-steps") == "three"
            assert not (runs / "tiny-a").exists()
            shot(page, "01-form-errors.png")

            # start; watch nodes change phase; stop once a node after the first finished one runs
            start_from_form(page, ui.url, "tiny-a", TINY, port)
            seen: dict[str, list[str]] = {}
            at_stop = watch(page, lambda p: "Succeeded" in p.values() and "Running" in p.values(), 300, seen)
            page.click("#nodes a.log-link >> nth=0")
            page.wait_for_function("document.getElementById('log-text').textContent.includes('=== attempt 1')")
            shot(page, "02-watching.png")
            done_before_stop = {n for n, ph in at_stop.items() if ph == "Succeeded"}
            page.click("#stop-form button")
            wait_status(page, "Stopped", 120)
            assert page.is_hidden("#stop-form") and page.is_visible("#resume-form")
            run = json.loads((runs / "tiny-a" / "run.json").read_text())
            assert run["message"] == "interrupted"
            launch = page.text_content("#launch-log")  # what the runner said, as a terminal would show it
            assert "interrupted (SIGINT)" in launch and "run the same command again to resume" in launch
            assert "Traceback" not in launch
            left = subprocess.run(["pgrep", "-f", str(runs / "tiny-a")], capture_output=True, text=True).stdout
            assert not left.strip(), f"processes of the stopped run survived: {left}"
            after_stop = phases(page)
            assert all(after_stop[n] == "Succeeded" for n in done_before_stop)
            assert "Stopped" in after_stop.values() and "Failed" not in after_stop.values()  # the node the stop ended
            shot(page, "03-stopped.png")

            # resume: finished nodes are reused, the rest run, the report shows
            page.click("#resume-form button")
            wait_status(page, "Succeeded", 600)
            final = watch(page, lambda p: all(ph.startswith("Succeeded") for ph in p.values()), 30, seen)
            assert all(final[n] == "Succeeded (reused)" for n in done_before_stop), final
            assert any(ph == "Succeeded" for ph in final.values())  # at least one node ran after the resume
            changed = [n for n, hist in seen.items() if len(hist) >= 2]
            assert changed, f"no node was seen changing phase: {seen}"
            report = json.loads((runs / "tiny-a" / "report.json").read_text())
            assert report["verdict"] in page.text_content("#report")
            assert page.is_visible("img[src$='report.png']")
            shot(page, "04-report.png")

            # a second run, one parameter changed, compared with the first
            start_from_form(page, ui.url, "tiny-b", TINY | {"steps": "4"}, port)
            wait_status(page, "Succeeded", 600)
            served_as_run_says(runs / "tiny-b", cache_dir, port)
            page.goto(ui.url)
            rows = page.eval_on_selector_all("#runs tr[data-run]", "rs => rs.map(r => [r.dataset.run, r.dataset.status])")
            assert rows == [["tiny-b", "Succeeded"], ["tiny-a", "Succeeded"]]  # newest first
            shot(page, "05-runs.png")
            page.check("#runs input[value=tiny-a]")
            page.check("#runs input[value=tiny-b]")
            page.click("#compare-form button[type=submit]")
            assert page.text_content("#compare-head th:nth-child(2)") == "tiny-a"  # the older run is A
            diff = page.eval_on_selector_all("#param-diff tr:has-text('steps') td", "tds => tds.map(t => t.textContent)")
            assert diff == ["steps", "3", "4"]
            b_report = json.loads((runs / "tiny-b" / "report.json").read_text())
            diff_b = b_report["finetuned_minus_zero_shot"]
            row = page.text_content("#estimates tr:has-text('finetuned_minus_zero_shot')")
            assert f"{diff_b['mean']:+.3f} [{diff_b['ci95'][0]:+.3f}, {diff_b['ci95'][1]:+.3f}]" in row
            shot(page, "06-compare.png")

            # bad input: a folder that is not a run, a path outside the runs folder: a message in the page
            (runs / "notes").mkdir()
            (runs / "notes" / "todo.txt").write_text("not a run")
            page.goto(f"{ui.url}/runs/notes")
            assert "is not a run folder" in page.text_content("main")
            page.goto(f"{ui.url}/runs/tiny-a/files/..%2F..%2F..%2Fetc%2Fpasswd")
            assert "outside the run folder" in page.text_content("main")
            assert (runs / "notes" / "todo.txt").read_text() == "not a run"
        for pid, proc in list(control.started_here.items()):
            assert proc.poll() is not None, f"runner {pid} still running"
    finally:
        page.close()
        for proc in list(control.started_here.values()):  # never leave a runner behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stop = subprocess.run([sys.executable, "-m", "workflows.cli", "deployments", "--stop", "kubellm-nli"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "stopped: default/kubellm-nli" in stop.stdout, stop.stdout + stop.stderr
    assert port_free(port, wait_s=10)


def test_a_stopped_argo_server_is_a_message_in_the_page_and_the_form_keeps_its_values(tmp_path, browser):
    from workflows.ui.app import create_app
    from workflows.ui.argo import Argo

    dead = Argo(f"http://127.0.0.1:{free_port()}", "argo", "not-shown-anywhere")  # nothing listens there
    page = browser.new_page()
    try:
        with Served(create_app(tmp_path / "runs", argo=dead)) as ui:
            page.goto(f"{ui.url}/argo")
            assert "cannot reach the Argo Server" in page.text_content("#argo-error")
            page.goto(f"{ui.url}/new/nli")
            page.check("input[name=target][value=argo]")
            page.fill("#p-steps", "7")
            page.click("#params-form button[type=submit]")
            assert "cannot reach the Argo Server" in page.text_content("#form-error")
            assert page.input_value("#p-steps") == "7" and page.is_checked("input[name=target][value=argo]")
            assert "not-shown-anywhere" not in page.content()
            shot(page, "07-argo-down.png")
    finally:
        page.close()


def test_an_argo_workflow_watched_stopped_and_retried_in_chromium(tmp_path, browser):
    """The Argo pages against the loopback Argo Server stand-in, serving a workflow as a real
    controller left it: the page follows its phase, shows a pod's log, and retries it."""
    from tests.argoserver import ArgoServer
    from tests.test_ui_argo import TOKEN, recorded
    from workflows.ui.app import create_app
    from workflows.ui.argo import Argo

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        with ArgoServer(token=f"Bearer {TOKEN}") as argo, \
                Served(create_app(tmp_path / "runs", argo=Argo(argo.url, "argo", TOKEN))) as ui:
            wf = argo.add(recorded("retry-with-dags"))
            pod = argo.pod("retry-with-dags", "fail(1)")
            argo.logs[pod] = "+ sh -c exit 1\nexit status 1\n"
            page.goto(f"{ui.url}/argo")
            page.click("a[href='/argo/retry-with-dags']")
            assert page.text_content("#status") == "Running"
            assert page.is_disabled("form[action$='/retry'] button")
            page.click("a.argo-log-link:has-text('fail(1)')")
            page.wait_for_function("document.getElementById('log-text').textContent.includes('exit status 1')")
            page.click("form[action$='/stop'] button")  # PUT .../stop; the stand-in marks it Failed
            page.wait_for_function("document.getElementById('status').textContent === 'Failed'")
            assert "Stopped with strategy" in page.text_content("#wf-message")
            assert page.is_enabled("form[action$='/retry'] button")
            shot(page, "08-argo-stopped.png")
            page.click("form[action$='/retry'] button")
            page.wait_for_function("document.getElementById('status').textContent === 'Running'")
            calls = [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in argo.requests if r["method"] == "PUT"]
            assert calls == [("PUT", "stop"), ("PUT", "retry")]
            assert wf["status"]["phase"] == "Running"
            wf["status"] |= {"phase": "Succeeded", "finishedAt": "2020-06-02T00:30:00Z"}  # the controller moves on
            page.wait_for_function("document.getElementById('status').textContent === 'Succeeded'", timeout=15000)
            assert TOKEN not in page.content()
    finally:
        page.close()
