"""The first node of every kubellm workflow: check the parameter values the workflow was submitted
with, as `kubellm compile` and `kubellm run` check them, before any other node starts.

    python -m workflows.check --compiled '{"gpus": "0", "method": "lora"}' distill gpus=1 method=lora ...

`argo submit -p` can set any parameter, but a compile-time parameter (`kubellm params` marks them)
has already shaped the YAML: the GPU queue, images and GPU requests for `gpus`, the second server
of a full fine-tune for `method`, the DAG's parallelism for `max-servers`. A submitted value that
differs from the compiled one is refused here, with the compile command that would honour it.
Checks that need this machine's files (local model folders, study files) are left to the steps
that read them on the cluster.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys


def problems(pipeline: str, compiled: dict[str, str], values: dict[str, str]) -> list[str]:
    mod = importlib.import_module(f"workflows.{pipeline}")
    out = []
    changed = {k: v for k, v in values.items() if k in compiled and compiled[k] != v}
    for k, v in sorted(changed.items()):
        out.append(f"parameter {k}={v!r} was given at submit time, but this workflow was compiled with "
                   f"{k}={compiled[k]!r} and {k} shapes the compiled YAML: compile it with "
                   f"`kubellm compile {pipeline} -p {k}={v} ...` and submit that file")
    try:
        mod.validate_params(values, files=False)
    except ValueError as e:
        out.append(str(e))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pipeline")
    ap.add_argument("--compiled", default="{}", help="JSON object: the compile-time parameters' compiled values")
    ap.add_argument("values", nargs="*", help="key=value: every parameter as submitted")
    a = ap.parse_args(argv)
    values = dict(v.split("=", 1) for v in a.values if "=" in v)
    found = problems(a.pipeline, json.loads(a.compiled), values)
    for p in found:
        print(f"error: {a.pipeline}: {p}", file=sys.stderr)
    if not found:
        print(f"{a.pipeline}: {len(values)} parameter(s) ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
