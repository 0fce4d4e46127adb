"""Load benchmark of the NLI service (steps.nli_service) on loopback: micro-batching on against off.

    flock /tmp/kubellm-heavy.lock python -m benchmarks.bench_nli_service          # ~15 min, 2 cores
    python -m benchmarks.bench_nli_service --concurrency 1,32 --requests 32        # a quick look

What it measures: the real service, started as a subprocess on a free loopback port, once per
configuration and one after the other (never two at once on 2 cores):
  on   the service defaults: max_batch_size 16, max_wait_ms 10 (pairs of concurrent requests
       share one forward pass)
  off  max_batch_size 1: one forward pass per request; everything else the same (model, pairs,
       OMP_NUM_THREADS, max_wait_ms, which a batch of one never waits for)
At each concurrency C (--concurrency), a closed loop: C workers each send POST /predict back to
back, so exactly C requests are in flight until the level's last ones. After a warm-up (--warmup
x C requests, discarded), --requests requests are timed. Per level: requests, errors (non-200 or a
transport error), wall seconds, requests/s, latency p50/p95/p99 of the successful requests, and,
from the server's /metrics before and after the timed part, the mean batch size (nli_batch_size
sum/count deltas), the mean forward-pass time, its cost per pair, and the share of the wall time
the model was busy.
`ratio_on_over_off.c<C>` is requests/s on over off at the same C; the servers run in sequence, so
a drift of the machine between them would show up in the ratio.

The pairs are realistic Kubernetes NLI pairs from steps.nli_data (premises are API-reference
field descriptions, 100 to 1,000 characters), shuffled with a fixed seed; each configuration sends
the same pairs in the same order. The run writes OUT/bench_nli_service-<UTC start>.json
(benchmarks/record.py), saved after every level, and prints a table at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.record import Run

METRIC_RE = re.compile(r"^(nli_(?:batch_size|forward_seconds)_(?:sum|count)) (\S+)$", re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    from steps.nli_data import generate_pairs, reference_docs

    pairs = [(p["premise"], p["hypothesis"]) for p in generate_pairs(reference_docs(), seed=seed, max_pairs=n)]
    # the generator puts documents that state a default or a bound first; shuffled, every level
    # gets the whole spread of premise lengths rather than one kind of document
    random.Random(seed).shuffle(pairs)
    return pairs


def start_server(model: str, batch: int, wait_ms: float, log: Path,
                 timeout_s: float) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    cmd = [sys.executable, "-m", "steps.nli_service", "--model", model, "--port", str(port),
           "--max-batch-size", str(batch), "--max-wait-ms", str(wait_ms), "--log-level", "warning"]
    t0 = time.monotonic()
    # its own session: the finally block ends the server and anything it spawned by process group
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the NLI service exited with code {proc.returncode} before it was ready; its log "
                               f"({log}) ends:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return proc, base, time.monotonic() - t0
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"the NLI service was not ready after {timeout_s:.0f} s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


async def counters(client: httpx.AsyncClient) -> dict[str, float]:
    r = await client.get("/metrics")
    r.raise_for_status()
    return {k: float(v) for k, v in METRIC_RE.findall(r.text)}


async def closed_loop(client: httpx.AsyncClient, pairs: list, start: int, n: int,
                      c: int) -> tuple[list, Counter, float]:
    """n requests through c workers, each sending its next request as soon as its last one
    answered: latencies (s) of the 200s, errors by status, wall seconds."""
    issued, latencies, errors = 0, [], Counter()

    async def worker() -> None:
        nonlocal issued
        while issued < n:  # one event loop: the check and the increment cannot interleave
            premise, hypothesis = pairs[(start + issued) % len(pairs)]
            issued += 1
            t0 = time.perf_counter()
            try:
                r = await client.post("/predict", json={"premise": premise, "hypothesis": hypothesis})
                status = r.status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[str(status)] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    return latencies, errors, time.perf_counter() - t0


async def measure_level(base: str, pairs: list, cursor: int, c: int, n: int, warmup: int) -> tuple[dict, int]:
    limits = httpx.Limits(max_connections=c + 1, max_keepalive_connections=c + 1)  # +1: the /metrics reads
    # a generous timeout: at C=32 without batching a request queues behind 31 forward passes
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=600) as client:
        _, warm_errors, _ = await closed_loop(client, pairs, cursor, warmup, c)
        cursor += warmup
        before = await counters(client)
        lat, errors, wall = await closed_loop(client, pairs, cursor, n, c)
        after = await counters(client)
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    passes = d["nli_batch_size_count"]
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0] if lat else float("nan")] * 99
    level = {"concurrency": c, "requests": n, "ok": len(lat), "errors": sum(errors.values()),
             "errors_by_status": dict(errors), "warmup_requests": warmup, "warmup_errors": sum(warm_errors.values()),
             "wall_s": wall, "requests_per_s": len(lat) / wall,
             "latency_ms": {"p50": q[49] * 1e3, "p95": q[94] * 1e3, "p99": q[98] * 1e3,
                            "mean": statistics.fmean(lat) * 1e3 if lat else None, "max": max(lat, default=0) * 1e3},
             "forward_passes": int(passes),
             "mean_batch_size": d["nli_batch_size_sum"] / passes if passes else None,
             "mean_forward_s": d["nli_forward_seconds_sum"] / passes if passes else None,
             # what one pair costs inside a pass: the figure batching has to lower to pay
             "forward_s_per_pair": d["nli_forward_seconds_sum"] / d["nli_batch_size_sum"] if passes else None,
             # near 1: the model never idled, so requests/s is what the forward passes allow
             "forward_busy_share": d["nli_forward_seconds_sum"] / wall}
    return level, cursor + n


def bench_config(run: Run, name: str, batch: int, wait_ms: float, pairs: list, a: argparse.Namespace,
                 logs: Path) -> None:
    section = run.results[name] = {"server": {"model": a.model, "max_batch_size": batch, "max_wait_ms": wait_ms},
                                   "levels": {}}
    proc = None
    try:
        proc, base, ready_s = start_server(a.model, batch, wait_ms, logs / f"{name}.log", a.ready_timeout)
        section["server"]["ready_s"] = ready_s
        cursor = 0  # each configuration restarts the pair sequence: both send the same pairs per level
        for c in a.levels:
            level, cursor = asyncio.run(measure_level(base, pairs, cursor, c, a.requests, a.warmup * c))
            section["levels"][f"c{c}"] = level
            run.save()  # after every level: a stopped run keeps what it measured
            print(f"{name} c={c}: {level['requests_per_s']:.2f} req/s, p50 {level['latency_ms']['p50']:.0f} ms, "
                  f"mean batch {level['mean_batch_size'] or 0:.1f}, {level['wall_s']:.0f} s",
                  file=sys.stderr, flush=True)
    finally:
        if proc is not None:
            stop_server(proc)
            section["server"]["exit_code"] = proc.returncode


def table(results: dict, levels: list[int]) -> str:
    head = f"{'config':<7}{'C':>4}{'req':>6}{'err':>5}{'wall s':>8}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}" \
           f"{'p99 ms':>9}{'batch':>7}{'fwd s':>7}{'s/pair':>8}{'busy':>6}"
    rows = [head, "-" * len(head)]
    for name in ("on", "off"):
        for c in levels:
            lv = results.get(name, {}).get("levels", {}).get(f"c{c}")
            if lv:
                ms = lv["latency_ms"]
                rows.append(f"{name:<7}{c:>4}{lv['requests']:>6}{lv['errors']:>5}{lv['wall_s']:>8.1f}"
                            f"{lv['requests_per_s']:>8.2f}{ms['p50']:>9.0f}{ms['p95']:>9.0f}{ms['p99']:>9.0f}"
                            f"{lv['mean_batch_size'] or 0:>7.2f}{lv['mean_forward_s'] or 0:>7.2f}"
                            f"{lv['forward_s_per_pair'] or 0:>8.3f}"
                            f"{lv['forward_busy_share']:>6.2f}")
    rows.append("")
    rows += [f"ratio req/s on/off at C={c}: {r:.2f}x" for c in levels
             if (r := results.get("ratio_on_over_off", {}).get(f"c{c}")) is not None]
    return "\n".join(rows)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results", help="results folder; each run adds a new file to it")
    ap.add_argument("--model", default="smollm2-135m", help="the model both servers load (bundled name or folder)")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated requests in flight per level")
    # sized from a trial (--requests 16): ~0.41 s per request at every C, on or off, so 6 levels of 256
    # take ~10.5 min, plus warm-ups and two model loads; the first full run took 870 s, as batches of
    # 15 cost more per pair (0.63 s) than single passes
    ap.add_argument("--requests", type=int, default=256, help="timed requests per level and configuration")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up requests per level, as a multiple of C")
    ap.add_argument("--max-batch-size", type=int, default=16, help="the 'on' configuration (service default 16)")
    ap.add_argument("--max-wait-ms", type=float, default=10.0, help="both configurations (service default 10)")
    ap.add_argument("--pairs", type=int, default=300, help="distinct pairs generated by steps.nli_data")
    ap.add_argument("--seed", type=int, default=0, help="seed of the pair generator and their order")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="OMP_NUM_THREADS for both servers (torch's default here: the usable cores)")
    ap.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for a server's /readyz")
    a = ap.parse_args()
    try:
        a.levels = [int(x) for x in a.concurrency.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--concurrency {a.concurrency!r}: give comma-separated integers, e.g. 1,8,32")
    if not a.levels or min(a.levels) < 1 or a.requests < 1:
        ap.error("--concurrency needs levels >= 1 and --requests at least 1")
    # set before Run so record.py writes it into the file's env; both servers inherit it
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # a SIGTERM (e.g. a timeout wrapper) must still run the finally blocks that stop the server
    signal.signal(signal.SIGTERM, interrupt)
    t0 = time.monotonic()
    with Run("bench_nli_service", a.out, a) as run, tempfile.TemporaryDirectory(prefix="bench-nli-") as logs:
        pairs = load_pairs(a.pairs, a.seed)
        chars = sorted(len(p) for p, _ in pairs)
        run.results["pairs"] = {"source": f"steps.nli_data.generate_pairs(reference_docs(), seed={a.seed}, "
                                          f"max_pairs={a.pairs}), shuffled with seed {a.seed}",
                                "count": len(pairs), "premise_chars_median": statistics.median(chars),
                                "premise_chars_max": chars[-1], "premise_chars_min": chars[0]}
        run.save()
        for name, batch in (("on", a.max_batch_size), ("off", 1)):
            bench_config(run, name, batch, a.max_wait_ms, pairs, a, Path(logs))
        run.results["ratio_on_over_off"] = {
            f"c{c}": run.results["on"]["levels"][f"c{c}"]["requests_per_s"]
            / run.results["off"]["levels"][f"c{c}"]["requests_per_s"] for c in a.levels}
        run.results["wall_s"] = time.monotonic() - t0
        run.save()
        print(table(run.results, a.levels))
        print(f"wall time: {run.results['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
