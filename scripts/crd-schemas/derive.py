"""Derive strict JSON schemas for scripts/check_k8s.sh from CustomResourceDefinition manifests.

    python scripts/crd-schemas/derive.py --source "kubernetes-sigs/kueue v0.17.0 (Apache-2.0)" \
        --version v1beta2 --out scripts/crd-schemas/kueue.x-k8s.io CRD.yaml...

For each CRD and the served version asked for, writes OUT/<kind>-<version>.json (kind in lower
case): the CRD's openAPIV3Schema made strict the way kubernetes-validate --strict makes the
built-in kinds strict (every object with `properties` and no `additionalProperties` or
`x-kubernetes-preserve-unknown-fields` rejects unknown keys), with apiVersion and kind pinned
and metadata checked as an ObjectMeta. Descriptions are dropped (they only add size); CEL rules
(`x-kubernetes-validations`) stay in the file but no offline validator evaluates them.
Only PyYAML and the standard library are needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

# The ObjectMeta fields a manifest may carry (Kubernetes API reference, ObjectMeta v1). Written out
# rather than taken from the built-in schemas so that the derived files stand alone.
_STR = {"type": "string"}
_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": _STR, "generateName": _STR, "namespace": _STR, "labels": _MAP, "annotations": _MAP,
        "finalizers": {"type": "array", "items": _STR},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        # set by the API server; present in objects read back from a cluster
        "uid": _STR, "resourceVersion": _STR, "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]}, "deletionTimestamp": _STR,
        "deletionGracePeriodSeconds": {"type": "integer"}, "selfLink": _STR,
        "managedFields": {"type": "array", "items": {"type": "object"}},
    },
}


def strict(node):
    """A copy of an OpenAPI v3 schema node without descriptions, closed to unknown keys."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    # keys of `properties` are field names (a field may be called "description"), not keywords
    out = {k: ({f: strict(s) for f, s in v.items()} if k == "properties" else strict(v))
           for k, v in node.items() if k != "description"}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def derive(crd: dict, version: str, source: str) -> tuple[str, dict]:
    spec = crd["spec"]
    served = [v for v in spec["versions"] if v["name"] == version and v.get("served")]
    if not served:
        names = [v["name"] for v in spec["versions"] if v.get("served")]
        raise SystemExit(f"{crd['metadata']['name']}: version {version} is not served (served: {names})")
    schema = strict(served[0]["schema"]["openAPIV3Schema"])
    kind, group = spec["names"]["kind"], spec["group"]
    schema["properties"]["apiVersion"] = {"type": "string", "enum": [f"{group}/{version}"]}
    schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted(set(schema.get("required") or []) | {"apiVersion", "kind", "metadata"})
    return f"{kind.lower()}-{version}.json", {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": f"Derived by scripts/crd-schemas/derive.py from the CRD {crd['metadata']['name']} "
                    f"({source}), version {version}, scope {spec['scope']}.",
        **schema,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("crds", nargs="+", type=Path, help="CRD manifests (YAML)")
    ap.add_argument("--version", required=True, help="the served API version to derive, e.g. v1beta2")
    ap.add_argument("--out", required=True, type=Path, help="folder for the JSON schemas (one per API group)")
    ap.add_argument("--source", required=True, help="where the CRDs come from, with release and licence")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.crds:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            name, schema = derive(crd, args.version, args.source)
            (args.out / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
