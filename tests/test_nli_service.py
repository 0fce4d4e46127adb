"""steps.nli_service over real HTTP on loopback: one uvicorn server (in a thread) for the module,
serving the bundled SmolLM2 zero-shot. The model is loaded once, by the server itself, and the
probes are polled from the moment the server starts, so the loading phase is observed for real."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from steps import nli_model
from steps.nli_model import LABELS
from steps.nli_service import NliServiceConfig, build_server, run
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [
    ("A man is sleeping in his bed.", "A man is awake."),
    ("Two dogs run across a snowy field.", "Animals are outside."),
    ("Kids play soccer in the park.", "Children are playing a sport."),
    ("The shop is closed on Sundays.", "The shop opens every day of the week."),
    ("A woman reads a book on a train.", "A woman is travelling."),
    ("The soup is too hot to eat.", "The soup is cold."),
    ("He bought three apples.", "He bought fruit."),
    ("Rain fell all night in the city.", "The streets are wet."),
]


def metrics(base: str) -> dict[tuple, float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def sample(m: dict, name: str, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def serve_in_thread(server) -> threading.Thread:
    thread = threading.Thread(target=server.run, daemon=True, name="nli-test-server")
    thread.start()
    return thread


def stop(server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(timeout=60)
    assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def service(smollm2: str):
    cfg = NliServiceConfig(model=smollm2, port=free_port(), log_level="warning")
    server = build_server(cfg)
    base = f"http://127.0.0.1:{cfg.port}"
    statuses: list = []  # /readyz from t=0 until 200
    loading: dict = {}  # the other endpoints, asked once while the model was loading
    thread = serve_in_thread(server)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 300:
            try:
                code = httpx.get(f"{base}/readyz", timeout=10).status_code
            except httpx.TransportError:  # not listening yet
                statuses.append("refused")
                time.sleep(0.01)
                continue
            statuses.append(code)
            if code == 200:
                break
            if not loading:
                loading = {"health": httpx.get(f"{base}/health"), "livez": httpx.get(f"{base}/livez"),
                           "info": httpx.get(f"{base}/model/info"), "metrics": metrics(base),
                           "predict": httpx.post(f"{base}/predict", json={"premise": "a", "hypothesis": "b"}),
                           "bad": httpx.post(f"{base}/predict", json={"premise": "a"})}
            time.sleep(0.05)
        yield SimpleNamespace(base=base, cfg=cfg, server=server, statuses=statuses, loading=loading,
                              ready_s=time.monotonic() - t0)
    finally:
        stop(server, thread)


def test_not_ready_until_the_model_is_loaded(service):
    seen = [s for s in service.statuses if s != "refused"]
    assert seen[-1] == 200, service.statuses
    assert 503 in seen and seen.index(503) < seen.index(200), service.statuses  # the loading phase, observed
    during = service.loading
    assert during["health"].status_code == 503
    assert during["health"].json() == {"status": "loading", "model_loaded": False, "device": "cpu", "error": None}
    assert during["livez"].status_code == 200
    assert during["info"].status_code == 503
    assert during["predict"].status_code == 503 and "loading" in during["predict"].json()["detail"]
    assert during["predict"].headers["retry-after"] == "5"
    assert during["bad"].status_code == 422  # input is checked even while loading
    assert sample(during["metrics"], "nli_model_loaded") == 0
    after = httpx.get(f"{service.base}/health").json()
    assert after == {"status": "ok", "model_loaded": True, "device": "cpu", "error": None}
    assert sample(metrics(service.base), "nli_model_loaded") == 1


def test_predict_and_batch_agree(service):
    singles = []
    for premise, hypothesis in PAIRS[:3]:
        r = httpx.post(f"{service.base}/predict", json={"premise": premise, "hypothesis": hypothesis}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"label", "confidence", "scores"} and set(body["scores"]) == set(LABELS)
        assert abs(sum(body["scores"].values()) - 1) < 1e-6
        assert body["label"] == max(body["scores"], key=body["scores"].get)
        assert body["confidence"] == body["scores"][body["label"]]
        singles.append(body)
    r = httpx.post(f"{service.base}/predict/batch", timeout=60,
                   json={"pairs": [{"premise": p, "hypothesis": h} for p, h in PAIRS[:3]]})
    assert r.status_code == 200, r.text
    batch = r.json()["predictions"]
    assert [b["label"] for b in batch] == [s["label"] for s in singles]
    for b, s in zip(batch, singles):
        assert max(abs(b["scores"][k] - s["scores"][k]) for k in LABELS) < 1e-4


def test_model_info(service, smollm2):
    r = httpx.get(f"{service.base}/model/info")
    assert r.status_code == 200
    info = r.json()
    assert info["kind"] == "causal" and info["labels"] == list(LABELS) and info["device"] == "cpu"
    assert info["name"] == "smollm2-135m" and "SmolLM2-135M-Instruct" in info["base_model"]
    assert info["path"] == smollm2
    assert info["metrics"] is None and info["training_data"] is None and info["report_file"] is None
    assert info["limits"]["max_batch_size"] == 16 and info["load_s"] > 0
    assert httpx.get(f"{service.base}/docs").status_code == 200
    paths = httpx.get(f"{service.base}/openapi.json").json()["paths"]
    assert {"/predict", "/predict/batch", "/health", "/livez", "/readyz", "/model/info", "/metrics"} <= set(paths)
    invalid = paths["/predict"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert invalid == {"$ref": "#/components/schemas/InvalidRequest"}  # the 422 body this service sends


def test_model_card_passes_the_report_through(tmp_path):
    """What /model/info adds from the folder: a report as it is, training data from the training
    step's record beside an adapter."""
    assert nli_model.model_card(tmp_path) == {"training_data": None, "metrics": None, "report_file": None}
    (tmp_path / "train_config.json").write_text(json.dumps({"data": "runs/nli/data/train.jsonl"}))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    report = {"accuracy": 0.71, "macro_f1": 0.69, "n": 900, "split": "validation_matched"}
    (adapter / "report.json").write_text(json.dumps(report))
    assert nli_model.model_card(adapter) == {"training_data": "runs/nli/data/train.jsonl", "metrics": report,
                                             "report_file": "report.json"}
    (adapter / "nli_report.json").write_text(json.dumps({"accuracy": 0.8, "training_data": "multi_nli"}))
    card = nli_model.model_card(adapter)
    assert card["report_file"] == "nli_report.json" and card["training_data"] == "multi_nli"


LONG = "x" * 2001
BAD = [  # body, the field the 422 must name
    ({"hypothesis": "b"}, "premise"),
    ({"premise": "a"}, "hypothesis"),
    ({"premise": "", "hypothesis": "b"}, "premise"),
    ({"premise": "a", "hypothesis": " \n\t "}, "hypothesis"),
    ({"premise": LONG, "hypothesis": "b"}, "premise"),
    ({"premise": "a", "hypothesis": 3}, "hypothesis"),
    ({"premise": None, "hypothesis": "b"}, "premise"),
    ({"premise": ["a"], "hypothesis": "b"}, "premise"),
    ({"premise": "a", "hypothesis": "b", "label": "neutral"}, "label"),
    (["a", "b"], "body"),
    ("not json", "body"),
    (None, "body"),
]
BAD_BATCH = [
    ({"pairs": []}, "pairs"),
    ({"pairs": [{"premise": "a", "hypothesis": "b"}] * 65}, "pairs"),
    ({"pairs": [{"premise": "a", "hypothesis": "b"}, {"premise": "a"}]}, "pairs[1].hypothesis"),
    ({"pairs": [{"premise": "a", "hypothesis": "b"}, {"premise": "a", "hypothesis": LONG}]}, "pairs[1].hypothesis"),
    ({"pairs": {"premise": "a", "hypothesis": "b"}}, "pairs"),
    ({"pairs": [{"premise": "a", "hypothesis": "b"}], "extra": 1}, "extra"),
    ({}, "pairs"),
]


def post(base: str, path: str, body) -> httpx.Response:
    if body is None:
        return httpx.post(f"{base}{path}", timeout=30)
    if isinstance(body, str):
        return httpx.post(f"{base}{path}", content=body, headers={"content-type": "application/json"}, timeout=30)
    return httpx.post(f"{base}{path}", json=body, timeout=30)


@pytest.mark.parametrize("path,body,field", [("/predict", b, f) for b, f in BAD] +
                         [("/predict/batch", b, f) for b, f in BAD_BATCH])
def test_bad_input_is_a_422_naming_the_field(service, path, body, field):
    r = post(service.base, path, body)
    assert r.status_code == 422, r.text
    got = r.json()
    assert field in [e["field"] for e in got["detail"]], got
    assert got["error"].startswith("invalid request: ") and f"{field}: " in got["error"]
    assert LONG not in r.text  # an over-long input is not echoed back


def test_body_over_the_limit_is_413(service):
    big = {"premise": "a" * 1_100_000, "hypothesis": "b"}
    r = httpx.post(f"{service.base}/predict", json=big, timeout=30)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: only the bytes read so far can tell
        yield b'{"premise": "'
        for _ in range(40):
            yield b"a" * 32_768
        yield b'", "hypothesis": "b"}'

    r = httpx.post(f"{service.base}/predict", content=chunks(), headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 413, r.text

    def small():  # streamed and under the limit: read whole and answered
        yield b'{"premise": "A man is sleeping.",'
        yield b' "hypothesis": "A man is awake."}'

    r = httpx.post(f"{service.base}/predict", content=small(), headers={"content-type": "application/json"},
                   timeout=60)
    assert r.status_code == 200, r.text
    assert sample(metrics(service.base), "nli_requests_total", endpoint="/predict", status="413") == 2


async def _concurrent(base: str, pairs: list[tuple[str, str]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=httpx.Limits(max_connections=100)) as client:
        return await asyncio.gather(*[client.post("/predict", json={"premise": p, "hypothesis": h})
                                      for p, h in pairs])


def test_concurrent_requests_are_batched(service):
    reference = httpx.post(f"{service.base}/predict/batch", timeout=120,
                           json={"pairs": [{"premise": p, "hypothesis": h} for p, h in PAIRS]}).json()["predictions"]
    before = metrics(service.base)
    t0 = time.monotonic()
    responses = asyncio.run(_concurrent(service.base, PAIRS * 8))
    took = time.monotonic() - t0
    after = metrics(service.base)
    assert [r.status_code for r in responses] == [200] * 64
    for i, r in enumerate(responses):  # every request got the answer to its own pair
        ref = reference[i % len(PAIRS)]
        assert r.json()["label"] == ref["label"]
        assert max(abs(r.json()["scores"][k] - ref["scores"][k]) for k in LABELS) < 1e-4
    passes = sample(after, "nli_batch_size_count") - sample(before, "nli_batch_size_count")
    pairs = sample(after, "nli_batch_size_sum") - sample(before, "nli_batch_size_sum")
    singles = sample(after, "nli_batch_size_bucket", le="1.0") - sample(before, "nli_batch_size_bucket", le="1.0")
    over_max = passes - (sample(after, "nli_batch_size_bucket", le="16.0")
                         - sample(before, "nli_batch_size_bucket", le="16.0"))
    assert pairs == 64 and 4 <= passes < 64 and singles < passes and over_max == 0, (passes, singles)
    print(f"\n64 concurrent /predict: {took:.1f} s in {passes:.0f} forward passes")
    served = sample(after, "nli_requests_total", endpoint="/predict", status="200") - \
        sample(before, "nli_requests_total", endpoint="/predict", status="200")
    assert served == 64
    assert sample(after, "nli_queue_pairs") == 0


def test_max_batch_size_one_turns_batching_off(service):
    """A second server sharing the first one's loaded model: one forward pass per request."""
    cfg = NliServiceConfig(model=service.cfg.model, port=free_port(), max_batch_size=1, log_level="warning")
    server = build_server(cfg, model=service.server.config.app.state.nli.model)
    thread = serve_in_thread(server)
    base = f"http://127.0.0.1:{cfg.port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        responses = asyncio.run(_concurrent(base, PAIRS))
        assert [r.status_code for r in responses] == [200] * len(PAIRS)
        m = metrics(base)
        assert sample(m, "nli_batch_size_count") == len(PAIRS) == sample(m, "nli_batch_size_bucket", le="1.0")
    finally:
        stop(server, thread)


def test_metrics_count_requests_by_endpoint_and_status(service):
    before = metrics(service.base)
    for _ in range(2):
        assert httpx.get(f"{service.base}/livez").status_code == 200
    assert httpx.get(f"{service.base}/no/such/path").status_code == 404
    assert httpx.post(f"{service.base}/predict", json={"premise": "a"}).status_code == 422
    r = httpx.post(f"{service.base}/predict", json={"premise": PAIRS[0][0], "hypothesis": PAIRS[0][1]}, timeout=60)
    after = metrics(service.base)

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("nli_requests_total", endpoint="/livez", status="200") == 2
    assert delta("nli_requests_total", endpoint="other", status="404") == 1  # unknown paths share one label
    assert delta("nli_requests_total", endpoint="/predict", status="422") == 1
    assert delta("nli_requests_total", endpoint="/predict", status="200") == 1
    assert delta("nli_request_seconds_count", endpoint="/livez") == 2
    assert delta("nli_predictions_total", label=r.json()["label"]) == 1
    assert delta("nli_forward_seconds_count") == 1 and delta("nli_batch_size_count") == 1
    assert sample(after, "nli_model_loaded") == 1
    assert not [k for k, v in after.items() if k[0] == "nli_requests_total" and dict(k[1])["status"] == "500"]


def test_a_model_that_cannot_load_stops_the_service(tmp_path):
    """A folder that passes the quick check but is no model: the background load fails, /health
    says why, and run() ends with that reason instead of serving 503s forever."""
    (tmp_path / "config.json").write_text("{}")
    cfg = NliServiceConfig(model=str(tmp_path), port=free_port(), log_level="critical")
    result: dict = {}

    def target():
        try:
            result["value"] = run(cfg)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    err = result.get("error")
    assert isinstance(err, ValueError), result
    assert f"the NLI model {str(tmp_path)!r} failed to load" in str(err) and "cannot load" in str(err)


def test_cli_help_is_light_and_bad_config_is_a_message():
    code = ("import sys, runpy; sys.argv=['x','--help']\n"
            "try:\n    runpy.run_module('steps.nli_service', run_name='__main__')\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('torch','transformers','peft','fastapi','uvicorn') if m in sys.modules]\n"
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-800:]
    r = subprocess.run([sys.executable, "-m", "steps.nli_service", "--model", "/no/such/model", "--port", "0"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "unknown model '/no/such/model'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "steps.nli_service", "--max-batch-size", "0"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode != 0 and "max_batch_size" in r.stderr and "Traceback" not in r.stderr


def test_kubellm_serve_nli_starts_the_service_by_hand(smollm2):
    """`kubellm serve nli --model DIR` is the service step's own CLI: ready, answers, stops on SIGTERM."""
    import signal

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "workflows.cli", "serve", "nli", "--model", smollm2,
                             "--port", str(port), "--log-level", "warning"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        r = httpx.post(f"{base}/predict", json={"premise": PAIRS[0][0], "hypothesis": PAIRS[0][1]}, timeout=60)
        assert r.status_code == 200 and r.json()["label"] in LABELS
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            proc.kill()


def test_a_batch_is_cut_into_passes_of_similar_length():
    from steps.nli_service import Batcher

    b = Batcher(16, 0.01, lambda n, s: None, max_length_ratio=1.3)
    items = [(("p" * n, "h" * 10), f"f{n}") for n in (100, 12, 200, 95, 250, 14, 110)]
    passes = b.passes(items)
    sizes = [[len(p) + len(h) for (p, h), _ in group] for group in passes]
    assert sizes == [[22, 24], [105, 110, 120], [210, 260]]
    assert Batcher(16, 0.01, lambda n, s: None, max_length_ratio=1000).passes(items)[0] == sorted(
        items, key=lambda i: len(i[0][0]))
