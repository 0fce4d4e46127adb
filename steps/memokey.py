"""memokey: turn the inputs of expensive deterministic nodes into Argo memoization keys.

Argo stores a memoized node's outputs in a ConfigMap under its key; keys must be ConfigMap-key
characters and short, and the ConfigMap holds at most 1 MB, so the key is a hash of the inputs
(model names, URLs, comma lists...) and only output references, never data, are stored.

    python -m steps.memokey --out-dir /tmp/keys generate="teacher=smollm2-135m;topics=all;seed=0"
    # -> /tmp/keys/generate = "generate-3f1c..." (a later key can chain an earlier one's inputs)
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from steps._io import write_text


def key(name: str, inputs: str) -> str:
    return f"{name}-{hashlib.sha256(inputs.encode()).hexdigest()[:32]}"


def main(argv: list[str] | None = None) -> dict[str, str]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", required=True, help="one file per key, named after it")
    ap.add_argument("keys", nargs="+", help="NAME=INPUTS (any text; NAME must be [a-z0-9-]+)")
    a = ap.parse_args(argv)
    out: dict[str, str] = {}
    chained = ""
    for item in a.keys:
        name, sep, inputs = item.partition("=")
        if not sep or not name or not all(c.isalnum() or c == "-" for c in name):
            ap.error(f"{item!r} must look like NAME=INPUTS with NAME of letters, digits and '-'")
        chained += f"|{name}={inputs}"  # later keys cover earlier inputs: a finetune key changes with its data
        out[name] = key(name, chained)
        write_text(Path(a.out_dir) / name, out[name])
    print("\n".join(f"{k}={v}" for k, v in out.items()))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
