"""Throughput of a running OpenAI-compatible server: N chat requests of exactly 64 tokens
(ignore_eos) at concurrency C, for one or more model names on the same server.

With two or more `--model` names, every round sends the same kind of requests to each name in a
rotating order and takes the ratio of each to the first within the round: one server, one
change (which model the requests name). That is how a LoRA adapter's throughput compares with
its base model's, both served by one server:

    python -m steps.serve --model smollm2-135m --port 8011 \\
        --lora-modules "{ft: $PWD/runs/demo/nodes/finetune/artifacts/finetune/adapter}" &
    python -m benchmarks.throughput_probe --port 8011 --model smollm2-135m --model ft --rounds 3 \\
        --label "steps.serve defaults, LoRA on, adapter from runs/demo"

With one model it measures one server. The probe cannot see how the server was started: say it
in `--label`, which goes into the result file. Comparing two server settings this way takes two
runs (two files, no same-run baseline); `python -m benchmarks.bench_experiment --only dtype`
(or threads, lora, blocks) starts both servers itself and gives the ratio within one run.

Each run writes a new file OUT/throughput_probe-<UTC start>.json (benchmarks/record.py).
"""

import argparse
import asyncio
import json
import statistics
import sys
import time

import httpx

from benchmarks.record import Run

MAX_TOKENS = 64


async def probe(url: str, model: str, n: int, c: int, round_: int) -> dict:
    sem = asyncio.Semaphore(c)
    async with httpx.AsyncClient(timeout=300) as client:
        async def one(i: int) -> int:
            async with sem:
                # distinct per model and round, so no request is answered from what another just cached
                r = await client.post(f"{url}/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content":
                                                  f"Explain Kubernetes pods, part {i} ({model}, round {round_})."}],
                    "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True})
                r.raise_for_status()
                return r.json()["usage"]["completion_tokens"]

        t0 = time.monotonic()
        toks = await asyncio.gather(*(one(i) for i in range(n)))
        dt = time.monotonic() - t0
    return {"requests": n, "concurrency": c, "completion_tokens": sum(toks), "wall_s": dt,
            "tokens_per_s": sum(toks) / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("-n", type=int, default=32, help="requests per model and round")
    ap.add_argument("-c", type=int, default=16, help="requests in flight")
    ap.add_argument("--model", action="append",
                    help="model name to send requests to; repeat to compare names on one server (default smollm2-135m)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--label", default="", help="how the server was started (recorded, not checked)")
    ap.add_argument("--out", default="benchmarks/results", help="results folder; each run adds a new file to it")
    a = ap.parse_args()
    a.model = a.model or ["smollm2-135m"]
    url = f"http://{a.host}:{a.port}"
    with Run("throughput_probe", a.out, a) as run:
        res = run.results
        res.update(url=url, label=a.label, max_tokens=MAX_TOKENS, models=a.model, rounds={m: [] for m in a.model})
        for m in a.model:  # warm-up: the first requests after a start (or to a new adapter) are slow
            asyncio.run(probe(url, m, 4, 4, -1))
        for r in range(a.rounds):
            k = r % len(a.model)  # rotate the order so a busy stretch of the machine hits every name alike
            for m in a.model[k:] + a.model[:k]:
                out = asyncio.run(probe(url, m, a.n, a.c, r))
                res["rounds"][m].append(out)
                print(f"r{r} {m}: N={a.n} C={a.c} tokens={out['completion_tokens']} {out['wall_s']:.1f}s "
                      f"{out['tokens_per_s']:.1f} tok/s", file=sys.stderr)
            run.save()
        tps = {m: [x["tokens_per_s"] for x in v] for m, v in res["rounds"].items()}
        res["tokens_per_s_median"] = {m: statistics.median(v) for m, v in tps.items()}
        first = a.model[0]
        for m in a.model[1:]:
            per_round = [x / y for x, y in zip(tps[m], tps[first])]
            res[f"ratio_{m}_over_{first}_per_round"] = per_round
            res[f"ratio_{m}_over_{first}"] = statistics.median(per_round)
    print(json.dumps({k: v for k, v in res.items() if k != "rounds"}, indent=2))


if __name__ == "__main__":
    main()
