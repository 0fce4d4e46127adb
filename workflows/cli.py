"""`kubellm`: compile pipelines to Argo Workflows, run them on this machine, lint rendered YAML.

    kubellm compile distill -o distill.yaml [--store s3|pvc] [-p key=value ...]
    kubellm run distill [-p key=value ...] [--out runs/distill]
    kubellm lint distill.yaml
    kubellm params distill
    kubellm serve nli --model DIR [--port 8080]
    kubellm detect [--cluster] [--kubeconfig PATH] [--json]
    kubellm choose [--cluster | --from detect.json] [--context N] [--concurrency N] [--json]
    kubellm ask "question" [--index DIR] [--url URL --model NAME | --model openai:MODEL] [--top-k K] [--json]
    kubellm ui [--runs DIR] [--argo-server URL] [--host H] [--port P] [--token T]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

PIPELINES = ("distill", "experiment", "nli", "rag")



def pipeline_module(name: str):
    if name not in PIPELINES:
        raise SystemExit(f"unknown pipeline {name!r}; available: {', '.join(PIPELINES)}")
    import importlib

    return importlib.import_module(f"workflows.{name}")


def _params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"parameter {item!r} must look like key=value (e.g. -p steps=20)")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def compile_doc(name: str, store: str, params: dict[str, str], serve_port: int | None = None,
                checked: bool = False) -> dict:
    """The pipeline's Workflow as a dict; `checked`: the parameters already passed validate_params
    (check_local_run), so they are not checked a second time."""
    mod = pipeline_module(name)
    try:
        if not checked:
            mod.validate_params(params)
        wf = mod.build(store=store, params=params, **({"serve_port": serve_port} if serve_port else {}))
    except (ValueError, OSError) as e:
        raise SystemExit(f"{name}: {e}") from None
    return wf.to_dict()


def compile_cron(name: str, store: str, params: dict[str, str], schedule: str) -> dict:
    """A pipeline's CronWorkflow (rag: the index refresh from the live cluster)."""
    mod = pipeline_module(name)
    if not hasattr(mod, "cron"):
        raise SystemExit(f"{name} has no CronWorkflow; --cron is for: "
                         + ", ".join(p for p in PIPELINES if hasattr(pipeline_module(p), "cron")))
    try:
        from workflows.argo.cron import check_schedule

        check_schedule(schedule)
        return mod.cron(store=store, params=params, schedule=schedule).to_dict()
    except ValueError as e:
        raise SystemExit(f"{name} --cron: {e}") from None


def check_local_run(name: str, params: dict[str, str]) -> None:
    """What `kubellm run` (and `kubellm ui`'s form) checks before anything starts on this machine:
    the pipeline's parameter checks, GPUs this machine does not have, and what only a local run needs
    (a kubeconfig, local folders). A ValueError that names the parameter and the fix."""
    gpus = params.get("gpus", "0")
    if gpus not in ("0", "") and not shutil.which("nvidia-smi"):
        raise ValueError(f"gpus={gpus}, but this machine has no NVIDIA GPU (no nvidia-smi): run with "
                         f"-p gpus=0 here, or compile for a cluster with `kubellm compile {name} -p gpus={gpus}`")
    mod = pipeline_module(name)
    mod.validate_params(params)
    local_check = getattr(mod, "check_local_run", None)
    if local_check:
        local_check(params)


# Plain scalars that a YAML 1.2 (core schema) parser reads as numbers, booleans or null. PyYAML
# writes YAML 1.1 and leaves e.g. `2e-4` unquoted, which Go's and other 1.2 parsers read as a float
# where Argo's schema wants a string.
YAML12_NON_STRING = re.compile(r"""(?x)^(
    null|Null|NULL|~|true|True|TRUE|false|False|FALSE
  | [-+]?[0-9]+ | 0o[0-7]+ | 0x[0-9a-fA-F]+
  | [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
  | [-+]?\.(inf|Inf|INF) | \.nan|\.NaN|\.NAN
)$""")


def to_yaml(doc: dict) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str):
        style = "'" if YAML12_NON_STRING.match(value) else None
        if "\n" in value and not any(line != line.rstrip() for line in value.split("\n")):
            style = "|"  # a manifest or a script reads as itself (PyYAML cannot keep trailing blanks in it)
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=120)


def cmd_compile(a: argparse.Namespace) -> int:
    if a.cron:
        doc = compile_cron(a.pipeline, a.store, _params(a.param), a.schedule)
    else:
        doc = compile_doc(a.pipeline, a.store, _params(a.param))
    from workflows.lint import lint_workflow

    problems = lint_workflow(doc, a.output or f"<{a.pipeline}>")
    if problems:
        raise SystemExit("rendered workflow fails lint:\n  " + "\n  ".join(problems))
    text = to_yaml(doc)
    if a.output:
        from steps._io import write_text

        write_text(a.output, text)
        print(f"wrote {a.output} ({a.store} store)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    t0 = time.monotonic()
    params = _params(a.param)
    try:
        check_local_run(a.pipeline, params)
    except (ValueError, OSError) as e:
        raise SystemExit(f"{a.pipeline}: {e}") from None
    doc = compile_doc(a.pipeline, a.store, params, a.serve_port, checked=True)
    out = Path(a.out or f"runs/{a.pipeline}")
    out.mkdir(parents=True, exist_ok=True)
    from steps._io import write_text
    from workflows.runner import WorkflowError, run_workflow
    from workflows.runner.folderlock import folder_lock

    cache = Path(os.environ.get("KUBELLM_CACHE", Path.home() / ".cache" / "kubellm"))
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(out):  # a folder another runner works on is refused before anything is written
            write_text(out / "workflow.yaml", to_yaml(doc))
            result = run_workflow(doc, out, volumes={"models": cache}, jobs=a.jobs, stream_logs=a.logs,
                                  cluster=cache / "local-cluster")
    except WorkflowError as e:
        raise SystemExit(f"cannot run {a.pipeline} locally: {e}") from None
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM or SIGHUP: the runner stopped its nodes and wrote run.json
        try:
            print(f"\n{a.pipeline}: interrupted ({e or 'SIGINT'}) -> {out}; run the same command again to resume: "
                  "finished nodes are not redone", file=sys.stderr)
        except OSError:  # SIGHUP: the terminal is gone
            pass
        return 130
    wall = time.monotonic() - t0
    report = {"distill": _collect_report, "experiment": _experiment_report, "nli": _collect_report,
              "rag": _collect_report}[a.pipeline](out, result)
    print(f"\n{a.pipeline}: {result.phase} in {wall / 60:.1f} min ({wall:.0f} s) -> {out}")
    if report:
        print(f"report: {report}")
        verdict = json.loads(Path(report).read_text()).get("verdict") if report.endswith(".json") else None
        if verdict:
            print(f"verdict: {verdict}")
    if a.pipeline == "nli" and result.phase == "Succeeded":
        _print_deployments(cache / "local-cluster")
    if result.phase != "Succeeded":
        print("re-run the same command (same --out) to retry: finished nodes are not redone", file=sys.stderr)
        return 1
    return 0


def _collect_report(out: Path, result) -> str | None:
    """Copy the evaluate node's report to the run folder, adding the runner's per-node timings."""
    from steps._io import write_json

    # the runner records each node's outputs; the report folder is evaluate's `report` artifact
    path = (((result.nodes or {}).get("evaluate") or {}).get("outputs") or {}).get("artifacts", {}).get("report")
    if not path or not (Path(path) / "report.json").exists():
        return None
    src = Path(path)
    report = json.loads((src / "report.json").read_text())
    report["node_timings_s"] = {n: s.get("duration_s") for n, s in (result.nodes or {}).items()}
    report["local_run"] = {"wall_s": result.wall_s, "runner_overhead_s": result.overhead_s}
    for f in ("report.md", "report.html", "report.png"):
        if (src / f).exists():
            shutil.copyfile(src / f, out / f)
    write_json(out / "report.json", report)
    return str(out / "report.json")


def _print_deployments(root: Path) -> None:
    from workflows.runner.localcluster import deployments

    for d in deployments(root):
        if d["running"]:
            version = d["annotations"].get("kubellm.io/model-version", "?")
            print(f"serving: {d['name']} (model version {version}) at {d['url']} (pid {d['pid']}); "
                  f"try: curl -s {d['url']}/predict -H 'content-type: application/json' -d "
                  "'{\"premise\": \"...\", \"hypothesis\": \"...\"}'; stop it: kubellm deployments --stop "
                  f"{d['name']}")


def cmd_deployments(a: argparse.Namespace) -> int:
    """The local cluster's Deployments (what `kubellm run` deployed), and stopping them."""
    from workflows.runner.localcluster import deployments, stop_deployments

    root = Path(os.environ.get("KUBELLM_CACHE", Path.home() / ".cache" / "kubellm")) / "local-cluster"
    if a.stop:
        stopped = stop_deployments(root, None if a.stop == "all" else a.stop)
        print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing running named {a.stop!r}")
        return 0
    rows = deployments(root)
    if not rows:
        print(f"no deployments in the local cluster ({root})")
    for d in rows:
        state = f"running at {d['url']} (pid {d['pid']})" if d["running"] else "stopped"
        print(f"{d['namespace']}/{d['name']}: {state}; model version "
              f"{d['annotations'].get('kubellm.io/model-version', '-')}; logs {d['folder']}/log.txt")
    return 0


def _experiment_report(out: Path, result) -> str | None:
    """Where collect wrote the experiment's report: {root}/report/{timestamp}/ (root = the keyed
    artifact folder on the s3 wiring, the data volume on the pvc wiring)."""
    nodes = result.nodes or {}
    ts = (((nodes.get("plan") or {}).get("outputs") or {}).get("parameters") or {}).get("timestamp")
    if not ts:
        return None
    hits = sorted(out.glob(f"**/report/{ts}/report.md"))
    return str(hits[0]) if hits else None


def cmd_lint(a: argparse.Namespace) -> int:
    from workflows.lint import lint_cluster_file, lint_file, load_k8s_objects, load_required_secrets

    objects = secrets = None
    # by default what `kubectl apply -k k8s/overlays/cpu` and `kubectl apply -k k8s/rag` (the cluster
    # harvest's identity) hold together
    if a.overlay:
        overlays = a.overlay
    else:
        from workflows.k8s_objects import k8s_root

        try:
            has_rag = (k8s_root(a.k8s) / "rag" / "kustomization.yaml").is_file()
        except FileNotFoundError:
            has_rag = False
        overlays = ["overlays/cpu"] + (["rag"] if has_rag else [])
    built_from = " + ".join(f"{a.k8s.rstrip('/')}/{o.strip('/')}" for o in overlays)
    if not a.no_cluster:
        try:
            objects = [o for ov in overlays for o in load_k8s_objects(a.k8s, ov)]
            secrets = load_required_secrets(a.k8s)
        except (OSError, ValueError) as e:
            raise SystemExit(f"kubellm lint: cannot build the cluster objects of {built_from}: {e}\n"
                             "  (--k8s DIR and --overlay PATH name them; --no-cluster skips the cluster checks)") from None
    bad = 0
    for f in a.files:
        problems = lint_file(f)
        if objects is not None:
            problems += lint_cluster_file(f, objects, required_secrets=secrets, built_from=built_from)
        problems = list(dict.fromkeys(problems))
        for p in problems:
            print(p)
        bad += len(problems)
    if bad:
        print(f"{bad} problem(s)", file=sys.stderr)
        return 1
    checked = "workflow checks only" if objects is None else f"workflow and cluster checks against {built_from}"
    print(f"{len(a.files)} file(s) ok ({checked})", file=sys.stderr)
    return 0


def cmd_params(a: argparse.Namespace) -> int:
    mod = pipeline_module(a.pipeline)
    for k, p in mod.PARAMS.items():
        enum = f" (one of {', '.join(p.choices())})" if p.choices() else ""
        when = " [compile-time: set it with `kubellm compile -p`; the workflow refuses another value at submit]" \
            if p.compile_time else ""
        print(f"{k:20} {p.default!r:36} {p.help}{enum}{when}")
    return 0


SERVICES = {"nli": "steps.nli_service"}


def cmd_serve(a: argparse.Namespace) -> int:
    """Start a pipeline's service by hand, in the foreground, with the step's own CLI (its flags and
    --config file: `python -m steps.nli_service --help`)."""
    import runpy

    sys.argv = [SERVICES[a.service]] + a.args
    runpy.run_module(SERVICES[a.service], run_name="__main__")
    return 0


def _gib(n) -> str:
    return "-" if n is None else f"{n / (1 << 30):.1f} GiB"


def _table(title: str, columns: list[str], rows: list[list], no_wrap: tuple[str, ...] = ()) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, no_wrap=c in no_wrap)
    for r in rows:
        t.add_row(*("-" if v is None or v == "" else str(v) for v in r))
    Console().print(t)


def cmd_detect(a: argparse.Namespace) -> int:
    """Hardware of this machine (and of the cluster): a table for people, JSON for pipes and --json."""
    from steps._cli import load_config
    from steps.detect import DetectConfig, run as detect

    cfg = load_config(DetectConfig, None, {"cluster": a.cluster, "kubeconfig": a.kubeconfig,
                                           "kube_context": a.kube_context, "out": a.out})
    try:
        result = detect(cfg)
    except ValueError as e:
        raise SystemExit(f"kubellm detect: {e}") from None
    if a.json or not sys.stdout.isatty():
        print(json.dumps(result, indent=2))
        return 0
    loc = result["local"]
    cpu, mem = loc["cpu"], loc["memory"]
    rows = [["CPU", f"{cpu['model']} ({cpu['arch']}), {cpu['usable_cores']} of {cpu['logical_cores']} cores usable"
             + (f", cgroup quota {cpu['quota_cores']:g}" if cpu.get("quota_cores") else "")],
            ["CPU features", ", ".join(cpu["flags"]) or "none of interest"],
            ["memory", f"{_gib(mem['total_bytes'])} total, {_gib(mem['available_bytes'])} available"
             + (f", cgroup limit {_gib(mem['limit_bytes'])}" if mem.get("limit_bytes") else "")]]
    rows += [[f"GPU {g['index']}", f"{g['name']}, {_gib(g['memory_bytes'])}"
              + (f", compute capability {g['compute_capability']}" if g.get("compute_capability") else "")
              + (f", driver {g['driver']}" if g.get("driver") else "")] for g in loc["gpus"]]
    rows.append(["accelerator", loc["accelerator"] + (f" (from {loc['gpu_source']})" if loc["gpu_source"] else "")])
    _table(f"this machine ({loc['host']})", ["", ""], rows + [["note", n] for n in loc["notes"]])
    if "cluster" in result:
        cl = result["cluster"]
        rows = []
        for n in cl["nodes"]:
            gpu = n["gpu"] or {}
            res = (n["gpu_resources"] or {}).get(gpu.get("resource"), {})
            rows.append([n["name"], {True: "yes", False: "NO", None: "?"}[n["ready"]]
                         + ("" if n["schedulable"] else " (cordoned)"),
                         f"{res.get('allocatable', 0)}/{res.get('capacity', 0)}" if gpu else "",
                         gpu.get("product"), _gib(gpu.get("memory_bytes")) if gpu else "",
                         gpu.get("compute_capability"), gpu.get("cuda_driver"),
                         f"{n['cpu']['allocatable']:g}" if n["cpu"]["allocatable"] is not None else None,
                         _gib(n["memory"]["allocatable_bytes"]),
                         ", ".join(f"{t['key']}{'=' + t['value'] if t['value'] else ''}:{t['effect']}"
                                   for t in n["taints"])])
        _table(f"cluster {cl['server']} (context {cl['context']}): {len(cl['nodes'])} node(s)",
               ["node", "ready", "GPUs", "GPU", "GPU memory", "CC", "driver", "CPU", "memory", "taints"], rows)
    return 0


def cmd_choose(a: argparse.Namespace) -> int:
    """The largest models that fit, per role, and the distill pipeline's -p arguments for them."""
    from steps._cli import load_config
    from steps.choose import ChooseConfig, run as choose

    hardware = a.from_file or ("cluster" if a.cluster else "local")
    cfg = load_config(ChooseConfig, None, {"hardware": hardware, "kubeconfig": a.kubeconfig,
                                           "kube_context": a.kube_context, "context": a.context,
                                           "concurrency": a.concurrency, "utilization": a.utilization,
                                           "out": a.out})
    try:
        result = choose(cfg)
    except ValueError as e:
        raise SystemExit(f"kubellm choose: {e}") from None
    if a.json or not sys.stdout.isatty():
        print(json.dumps(result, indent=2))
        return 0
    rows = []
    for role, c in result["choices"].items():
        if not c.get("model"):
            rows.append([role, "none", "", "", "", c["why"]])
            continue
        rows.append([role, c["model"], f"{c['gpus'] or 'CPU'}, {c['dtype']}", c["pool"],
                     f"{_gib(c['need_bytes'])} of {_gib(c['budget_bytes'])}", c["why"]])
    _table(f"models for {result['source']} hardware at context {result['context']} x concurrency "
           f"{result['concurrency']} (utilization {result['utilization']:g})",
           ["role", "model", "GPUs (tp), dtype", "on", "needs of budget", "why"], rows, no_wrap=("role", "model"))
    for c in result["commands"]:
        print(c)
    for n in result["notes"]:
        print(f"note: {n}")
    return 0


def cmd_ask(a: argparse.Namespace) -> int:
    """One answer from retrieved documentation, with its numbered sources."""
    from pydantic import ValidationError

    from steps.ask import AskConfig, run as ask

    fields = {"question": a.question, "index": a.index, "model": a.model, "url": a.url,
              "api_key_env": a.api_key_env, "top_k": a.top_k, "method": a.method, "max_tokens": a.max_tokens}
    try:
        res = ask(AskConfig(**{k: v for k, v in fields.items() if v is not None}))
    except ValidationError as e:
        err = e.errors()[0]
        raise SystemExit(f"ask: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    except (ValueError, OSError) as e:
        raise SystemExit(f"ask: {e}") from None
    if a.json or not sys.stdout.isatty():
        print(json.dumps(res, indent=2))
        return 0
    print(res["answer"] or "(empty answer)")
    if res["finish_reason"] == "length":
        print(f"(cut at {a.max_tokens or 160} tokens)")
    print(f"\nSources ({res['method']} retrieval, {res['model']}, {res['latency_s']:.1f} s):")
    for src in res["sources"]:
        print(f"  [{src['n']}] {src['title']}  ({src['doc_id']})")
    return 0


def cmd_ui(a: argparse.Namespace) -> int:
    """The web UI (workflows/ui): bound to loopback unless a token protects it."""
    import ipaddress

    token = a.token or os.environ.get("KUBELLM_UI_TOKEN") or None
    try:
        loopback = a.host == "localhost" or ipaddress.ip_address(a.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise SystemExit(f"kubellm ui: --host {a.host} lets other machines in: give --token T (or set "
                         "KUBELLM_UI_TOKEN), and open the printed URL once to set the cookie")
    try:
        import uvicorn

        from workflows.ui.app import create_app
        from workflows.ui.argo import Argo
    except ImportError as e:
        raise SystemExit(f"kubellm ui needs the ui extra: pip install 'kubellm[ui]' ({e})") from None
    import socket
    from urllib.parse import urlsplit

    argo = None
    if a.argo_server:
        url = urlsplit(a.argo_server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise SystemExit(f"kubellm ui: --argo-server {a.argo_server!r}: give the server's URL, e.g. "
                             "https://localhost:2746 (after kubectl -n argo port-forward svc/argo-server 2746:2746)")
        argo = Argo(a.argo_server, a.namespace, os.environ.get("ARGO_TOKEN"),
                    verify=not a.argo_insecure)
    runs = Path(a.runs)
    if runs.exists() and not runs.is_dir():
        raise SystemExit(f"kubellm ui: --runs {runs} is a file, not a folder: give the folder that holds run folders")
    runs.mkdir(parents=True, exist_ok=True)
    family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    with socket.socket(family) as probe:  # a clear message now rather than uvicorn's log line later
        try:
            probe.bind((a.host, a.port))
        except OverflowError:
            raise SystemExit(f"kubellm ui: --port {a.port}: give a port from 1 to 65535") from None
        except OSError as e:
            raise SystemExit(f"kubellm ui: cannot listen on {a.host}:{a.port} ({e.strerror or e}): is another "
                             "server using it, or is the address not this machine's? Choose another --port or --host") from None
    app = create_app(runs, argo=argo, token=token, loopback=loopback, cwd=Path.cwd())
    shown = "[" + a.host + "]" if ":" in a.host else a.host
    print(f"kubellm ui: http://{shown}:{a.port}/" + ("?token=<the token>" if token else "")
          + f" (runs in {runs.resolve()}" + (f"; Argo at {a.argo_server}, namespace {a.namespace})" if argo else ")"),
          file=sys.stderr)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kubellm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile", help="render a pipeline to an Argo Workflow YAML")
    c.add_argument("pipeline", choices=PIPELINES)
    c.add_argument("-o", "--output", help="file to write (default: stdout)")
    c.add_argument("--store", default="s3", choices=("s3", "pvc"), help="where artifacts live on the cluster")
    c.add_argument("-p", "--param", action="append", default=[], help="key=value default for a workflow parameter")
    c.add_argument("--cron", action="store_true", help="the pipeline's CronWorkflow instead (rag: the index refresh "
                                                       "from the live cluster)")
    c.add_argument("--schedule", default="0 */6 * * *", help="with --cron: cron schedule (default every 6 hours)")
    c.set_defaults(fn=cmd_compile)
    r = sub.add_parser("run", help="run a pipeline on this machine (the compiled workflow, no cluster)")
    r.add_argument("pipeline", choices=PIPELINES)
    r.add_argument("-p", "--param", action="append", default=[], help="key=value workflow parameter")
    r.add_argument("--out", help="run folder (default runs/PIPELINE); re-running it resumes")
    r.add_argument("--store", default="s3", choices=("s3", "pvc"), help="artifact wiring to compile (both run locally)")
    r.add_argument("--jobs", type=int, default=None, help="nodes running at once (default 1)")
    r.add_argument("--serve-port", type=int, default=None, help="local port for the model server (default 8000; "
                                                                "nli: the service, default 8080)")
    r.add_argument("--logs", action="store_true", help="stream node logs to the terminal")
    r.set_defaults(fn=cmd_run)
    li = sub.add_parser("lint", help="strict checks of rendered workflow files, and what they need from the cluster",
                        description="Strict schema and reference checks of rendered workflows, then the cluster "
                                    "checks: objects named exist in the k8s/ overlay, images pinned, non-root "
                                    "containers with requests and limits, retries on network calls, progress of "
                                    "long steps. Each problem: <file>: <field path>: <what is wrong>.")
    li.add_argument("files", nargs="+")
    li.add_argument("--k8s", default="k8s", metavar="DIR",
                    help="kustomize folder of the cluster objects (default: k8s, else the kubellm checkout's)")
    li.add_argument("--overlay", action="append", metavar="PATH",
                    help="kustomize folder under --k8s the workflows run against; repeat for several applied "
                         "together (default: overlays/cpu and rag, the cluster harvest's identity)")
    li.add_argument("--no-cluster", action="store_true", help="only the strict workflow checks")
    li.set_defaults(fn=cmd_lint)
    sv = sub.add_parser("serve", help="start a pipeline's service by hand (nli: the NLI HTTP service)",
                        description="kubellm serve nli --model DIR [--port 8080 ...]: the service step's own "
                                    "flags follow the service name (python -m steps.nli_service --help)")
    sv.add_argument("service", choices=sorted(SERVICES))
    sv.add_argument("args", nargs=argparse.REMAINDER, help="the service's flags, e.g. --model DIR --port 8080")
    sv.set_defaults(fn=cmd_serve)
    de = sub.add_parser("deployments", help="the services `kubellm run` left running (the local cluster), and "
                                            "stopping them")
    de.add_argument("--stop", metavar="NAME", help="stop the named deployment (all: every one)")
    de.set_defaults(fn=cmd_deployments)
    dt = sub.add_parser("detect", help="the hardware of this machine (GPUs, CPU, memory), and of a cluster's nodes")
    dt.add_argument("--cluster", action="store_true", help="also list the cluster's nodes (needs kubellm[cluster])")
    dt.add_argument("--kubeconfig", metavar="PATH", help="default: $KUBECONFIG, ~/.kube/config or the pod's "
                                                         "ServiceAccount")
    dt.add_argument("--kube-context", metavar="NAME", help="kubeconfig context (default: its current-context)")
    dt.add_argument("--out", metavar="FILE", help="also write the JSON here (for `kubellm choose --from`)")
    dt.add_argument("--json", action="store_true", help="JSON even on a terminal")
    dt.set_defaults(fn=cmd_detect)
    ch = sub.add_parser("choose", help="the largest models that fit the hardware: student, teacher, served",
                        description="Largest registry model per role that fits this machine, the cluster or a "
                                    "saved `kubellm detect --out` file, with the -p arguments for the distill "
                                    "pipeline. The memory formula: python -m steps.choose --help")
    src = ch.add_mutually_exclusive_group()
    src.add_argument("--cluster", action="store_true", help="choose for the cluster's nodes")
    src.add_argument("--from", dest="from_file", metavar="FILE", help="a `kubellm detect --out` JSON file")
    ch.add_argument("--kubeconfig", metavar="PATH", help="with --cluster (default as for kubectl)")
    ch.add_argument("--kube-context", metavar="NAME", help="with --cluster: the kubeconfig context")
    ch.add_argument("--context", type=int, default=4096, help="tokens per sequence (default 4096)")
    ch.add_argument("--concurrency", type=int, default=16, help="sequences in flight at once (default 16)")
    ch.add_argument("--utilization", type=float, default=0.9, help="fraction of GPU memory to use (default 0.9)")
    ch.add_argument("--out", metavar="FILE", help="also write the JSON here")
    ch.add_argument("--json", action="store_true", help="JSON even on a terminal")
    ch.set_defaults(fn=cmd_choose)
    ak = sub.add_parser("ask", help="answer one question from retrieved documentation, with sources",
                        description="Retrieve the best chunks of an index, answer with a model, list the sources. "
                                    "Without --url or openai:MODEL the bundled model is served here for the "
                                    "answer. More: python -m steps.ask --help")
    ak.add_argument("question")
    ak.add_argument("--index", metavar="DIR", help="a steps.index folder (default: the v1.28 reference index, "
                                                   "built once under ~/.cache/kubellm)")
    ak.add_argument("--model", help="served model name, openai:MODEL, or a bundled model (default smollm2-135m)")
    ak.add_argument("--url", help="base URL of a running OpenAI-compatible server")
    ak.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key")
    ak.add_argument("--top-k", type=int, help="chunks retrieved (default 4)")
    ak.add_argument("--method", choices=("hybrid", "dense", "bm25"), help="retriever (default hybrid)")
    ak.add_argument("--max-tokens", type=int, help="answer length cap (default 160)")
    ak.add_argument("--json", action="store_true", help="JSON even on a terminal")
    ak.set_defaults(fn=cmd_ask)
    ui = sub.add_parser("ui", help="a web UI to configure, start, stop, watch and compare runs (locally and on Argo)",
                        description="Serves the runs folder's runs in a browser (needs the ui extra). Bound to "
                                    "127.0.0.1 by default; another --host needs --token or KUBELLM_UI_TOKEN.")
    ui.add_argument("--runs", default="runs", metavar="DIR", help="the runs folder (default: runs)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    ui.add_argument("--token", help="required on every request (default: $KUBELLM_UI_TOKEN); needed for a "
                                    "non-loopback --host")
    ui.add_argument("--argo-server", metavar="URL", help="also list, submit, stop and retry workflows on this Argo "
                                                         "Server (bearer token from $ARGO_TOKEN)")
    ui.add_argument("--namespace", default="argo", help="with --argo-server: the workflows' namespace (default argo)")
    ui.add_argument("--argo-insecure", action="store_true", help="with --argo-server: skip TLS verification (the "
                                                                 "self-signed certificate of a port-forwarded argo-server)")
    ui.set_defaults(fn=cmd_ui)
    pa = sub.add_parser("params", help="list a pipeline's parameters")
    pa.add_argument("pipeline", choices=PIPELINES)
    pa.set_defaults(fn=cmd_params)
    a = ap.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
