"""Throughput of a running OpenAI-compatible server: N chat requests of exactly 64 tokens
(ignore_eos) at concurrency C. Used to compare vLLM-CPU settings against each other.

    python -m steps.serve --model smollm2-135m --port 8011 --enable-lora false --dtype bfloat16 &
    python -m benchmarks.throughput_probe --port 8011 -n 32 -c 16
"""

import argparse
import asyncio
import time

import httpx


async def main(port: int, n: int, c: int, model: str) -> None:
    sem = asyncio.Semaphore(c)
    async with httpx.AsyncClient(timeout=300) as client:
        async def one(i: int) -> int:
            async with sem:
                r = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": f"Explain Kubernetes pods, part {i}."}],
                    "max_tokens": 64, "temperature": 0, "ignore_eos": True})
                return r.json()["usage"]["completion_tokens"]

        t0 = time.monotonic()
        toks = await asyncio.gather(*(one(i) for i in range(n)))
        dt = time.monotonic() - t0
        print(f"N={n} C={c} tokens={sum(toks)} {dt:.1f}s {sum(toks) / dt:.1f} tok/s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("-c", type=int, default=16)
    ap.add_argument("--model", default="smollm2-135m")
    a = ap.parse_args()
    asyncio.run(main(a.port, a.n, a.c, a.model))
