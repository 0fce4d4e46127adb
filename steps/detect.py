"""Hardware detection: this machine's GPUs, CPU and memory, or the nodes of a Kubernetes cluster.

    python -m steps.detect                                   # this machine (JSON on stdout)
    python -m steps.detect --cluster                         # + the nodes of the kubeconfig's cluster
    python -m steps.detect --cluster --kubeconfig ~/.kube/prod --out hardware.json

This machine: CUDA GPUs through torch (name, memory, compute capability) when torch sees any, else
`nvidia-smi`, else `rocm-smi` (AMD); always the CPU (model, cores usable by this process,
instruction sets that matter for CPU inference) and memory (/proc/meminfo, and a cgroup limit when
one applies, as in a pod). The parsers are pure functions of the commands' text (tested on recorded
outputs); `steps.choose` turns the result into model choices.

A cluster: the Node objects through the Kubernetes API (lightkube, `pip install 'kubellm[cluster]'`;
credentials from --kubeconfig, $KUBECONFIG, ~/.kube/config, or a pod's ServiceAccount): GPUs
allocatable and capacity (`nvidia.com/gpu`, `amd.com/gpu`), cpu and memory, the GPU feature
discovery labels (product, memory, compute capability, driver), taints and readiness. Listing nodes
is cluster-scoped: the identity needs `list` on `nodes` through a ClusterRole.

`--json` is accepted for symmetry with `kubellm detect`: the step always prints JSON.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

MIB = 1 << 20
KIB = 1 << 10
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")
SERVICE_ACCOUNT = "the pod's ServiceAccount"
# CPU features that decide how fast (and in which dtype) a CPU engine runs: AVX-512/AMX for bf16 and
# int8 kernels on x86, NEON (reported as `asimd` on aarch64) and SVE on ARM.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "neon", "sve")
NVIDIA_SMI_FIELDS = ("name", "memory.total", "compute_cap", "driver_version")


class DetectConfig(BaseModel):
    cluster: bool = Field(False, description="also list the nodes of the Kubernetes cluster (needs lightkube)")
    kubeconfig: str | None = Field(None, description="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or "
                                                     "the pod's ServiceAccount)")
    kube_context: str | None = Field(None, description="kubeconfig context (default: its current-context)")
    chunk_size: int = Field(100, ge=1, description="nodes per API request (the rest is paged with `continue`)")
    timeout_s: float = Field(10.0, gt=0, description="timeout of each Kubernetes API request")
    torch: bool = Field(True, description="ask torch for CUDA/ROCm GPUs first (false: nvidia-smi/rocm-smi only)")
    out: str | None = Field(None, description="also write the JSON to this file")


# ---- this machine: pure parsers of recorded text -----------------------------------------------

def _na(value: str) -> str | None:
    value = value.strip()
    return None if not value or value.strip("[]").upper() in ("N/A", "NOT SUPPORTED") else value


def parse_nvidia_smi(text: str, fields: tuple[str, ...] = NVIDIA_SMI_FIELDS) -> list[dict]:
    """`nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits`: one line per GPU, memory in MiB."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) != len(fields):
            raise ValueError(f"nvidia-smi line {line!r} has not the {len(fields)} fields {', '.join(fields)}")
        values = dict(zip(fields, (_na(v) for v in parts)))
        memory = values.get("memory.total")
        gpus.append({"index": len(gpus), "vendor": "nvidia", "name": values.get("name"),
                     "memory_bytes": int(float(memory) * MIB) if memory else None,
                     "compute_capability": values.get("compute_cap"),
                     "driver": values.get("driver_version")})
    return gpus


def parse_rocm_smi(text: str) -> list[dict]:
    """`rocm-smi --showproductname --showmeminfo vram --json`: {"card0": {...}, ...}. Key names changed
    across ROCm releases ("Card series" / "Card Series"), and some builds print warnings first."""
    start = text.find("{")
    if start < 0:
        return []
    try:
        data = json.loads(text[start:])
    except json.JSONDecodeError as e:
        raise ValueError(f"rocm-smi printed no valid JSON ({e.msg}): {text[:200]!r}") from e
    gpus = []
    cards = [(k, v) for k, v in data.items() if k.lower().startswith("card") and isinstance(v, dict)]
    for key, card in sorted(cards, key=lambda kv: int(re.sub(r"\D", "", kv[0]) or 0)):
        lower = {k.lower(): v for k, v in card.items()}
        name = next((lower[k] for k in ("card series", "card sku", "card model") if _na(str(lower.get(k, "")))), None)
        memory = lower.get("vram total memory (b)")
        gpus.append({"index": len(gpus), "vendor": "amd", "name": name,
                     "memory_bytes": int(memory) if memory and str(memory).isdigit() else None,
                     "gfx_version": lower.get("gfx version"), "compute_capability": None, "driver": None})
    driver = (data.get("system") or {}).get("Driver version")
    for g in gpus:
        g["driver"] = driver
    return gpus


def parse_cpuinfo(text: str) -> dict:
    """/proc/cpuinfo: the model name, the logical processors listed, and the flags of CPU_FLAGS present
    (x86 `flags`, ARM `Features`; aarch64 names NEON `asimd`)."""
    fields: dict[str, str] = {}
    processors = 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "processor" and value.strip().isdigit():
            processors += 1
        fields.setdefault(key, value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    if "asimd" in flags:
        flags.add("neon")
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model")
    if not model and fields.get("cpu implementer"):
        model = f"ARM implementer {fields['cpu implementer']} part {fields.get('cpu part', '?')}"
    return {"model": model, "processors": processors, "flags": [f for f in CPU_FLAGS if f in flags]}


def parse_meminfo(text: str) -> dict:
    """/proc/meminfo (kB, which is KiB) -> total and available bytes."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) * (KIB if parts[1:2] == ["kB"] else 1)
    return {"total_bytes": values.get("MemTotal"), "available_bytes": values.get("MemAvailable")}


def parse_cgroup_memory(text: str) -> int | None:
    """cgroup v2 memory.max ("max" or bytes) or v1 memory.limit_in_bytes (a huge number when unlimited)."""
    text = text.strip()
    if not text.isdigit() or int(text) >= 1 << 60:
        return None
    return int(text)


def parse_cgroup_cpu(text: str) -> float | None:
    """cgroup v2 cpu.max: "<quota> <period>" in microseconds, or "max <period>" without a limit."""
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit() or int(parts[1]) == 0:
        return None
    return int(parts[0]) / int(parts[1])


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _command(cmd: list[str], notes: list[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        notes.append(f"{cmd[0]} failed: {e}")
        return None
    if done.returncode != 0:
        notes.append(f"{cmd[0]} exited {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}")
        return None
    return done.stdout


def _torch_gpus(notes: list[str]) -> tuple[list[dict], str | None]:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return [], None
    try:
        import torch

        if not torch.cuda.is_available():
            return [], None
        vendor = "amd" if getattr(torch.version, "hip", None) else "nvidia"
        gpus = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "vendor": vendor, "name": p.name, "memory_bytes": int(p.total_memory),
                         "compute_capability": f"{p.major}.{p.minor}" if vendor == "nvidia" else None,
                         "driver": None, "runtime": torch.version.hip or torch.version.cuda})
        return gpus, "torch"
    except Exception as e:  # a broken CUDA install must not hide the CPU facts
        notes.append(f"torch could not query GPUs: {e}")
        return [], None


def _nvidia_smi(notes: list[str]) -> list[dict]:
    fields = NVIDIA_SMI_FIELDS
    out = _command(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"], notes)
    if out is None:
        # drivers before R510 do not know the compute_cap field: ask again without it
        fields = tuple(f for f in fields if f != "compute_cap")
        out = _command(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"], notes)
    return parse_nvidia_smi(out, fields) if out else []


def detect_local(use_torch: bool = True) -> dict:
    """This machine's accelerators, CPU and memory. `accelerator` is cuda, rocm or cpu."""
    notes: list[str] = []
    gpus, source = _torch_gpus(notes) if use_torch else ([], None)
    if not gpus and shutil.which("nvidia-smi"):
        gpus, source = _nvidia_smi(notes), "nvidia-smi"
    if not gpus and shutil.which("rocm-smi"):
        out = _command(["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json"], notes)
        gpus, source = (parse_rocm_smi(out) if out else []), "rocm-smi"
    vendors = {g["vendor"] for g in gpus}
    accelerator = "cuda" if "nvidia" in vendors else "rocm" if "amd" in vendors else "cpu"
    cpu = parse_cpuinfo(_read("/proc/cpuinfo") or "")
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    cpu.update({"arch": platform.machine(), "logical_cores": os.cpu_count() or cpu["processors"] or 1,
                "usable_cores": usable,
                "quota_cores": parse_cgroup_cpu(_read("/sys/fs/cgroup/cpu.max") or "")})
    cpu["model"] = cpu["model"] or platform.processor() or None
    memory = parse_meminfo(_read("/proc/meminfo") or "")
    memory["limit_bytes"] = parse_cgroup_memory(_read("/sys/fs/cgroup/memory.max")
                                                or _read("/sys/fs/cgroup/memory/memory.limit_in_bytes") or "")
    return {"source": "local", "host": platform.node(), "accelerator": accelerator,
            "gpu_source": source if gpus else None, "gpus": gpus, "cpu": cpu, "memory": memory,
            "notes": notes}


# ---- a cluster ---------------------------------------------------------------------------------

_SUFFIX = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60,
           "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1, "k": 10 ** 3, "M": 10 ** 6,
           "G": 10 ** 9, "T": 10 ** 12, "P": 10 ** 15, "E": 10 ** 18}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


def parse_quantity(text: str | int | float | None) -> float | None:
    """A Kubernetes quantity ("7910m" cores, "65843920Ki" bytes, "4") as a number."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    m = _QUANTITY.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    try:
        return float(Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2) or ""]))
    except InvalidOperation as e:
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from e


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _memory_from_name(product: str | None) -> int | None:
    # "NVIDIA-A100-SXM4-80GB", "Tesla-V100-SXM2-16GB": NVIDIA's GB in product names are GiB
    m = re.search(r"(\d+)\s*GB(?![A-Za-z])", product or "")
    return int(m.group(1)) * 1024 * MIB if m else None


def _gpu_from_labels(labels: dict[str, str], resources: dict[str, dict]) -> dict | None:
    nvidia = "nvidia.com/gpu" in resources or any(k.startswith(("nvidia.com/gpu.", "nvidia.com/cuda."))
                                                  for k in labels)
    amd = "amd.com/gpu" in resources or any(k.startswith("amd.com/gpu.") for k in labels)
    if nvidia:
        product = labels.get("nvidia.com/gpu.product")
        mib = _int(labels.get("nvidia.com/gpu.memory"))
        memory, source = (mib * MIB, "label") if mib else (_memory_from_name(product), "product name")
        major, minor = labels.get("nvidia.com/gpu.compute.major"), labels.get("nvidia.com/gpu.compute.minor")
        driver = [labels.get(f"nvidia.com/cuda.driver.{p}") for p in ("major", "minor", "rev")]
        res = resources.get("nvidia.com/gpu", {})
        return {"vendor": "nvidia", "resource": "nvidia.com/gpu", "product": product,
                "count": res.get("allocatable", _int(labels.get("nvidia.com/gpu.count")) or 0),
                "count_label": _int(labels.get("nvidia.com/gpu.count")),
                "memory_bytes": memory, "memory_source": source if memory else None,
                "compute_capability": f"{major}.{minor}" if major and minor else None,
                "cuda_driver": ".".join(d for d in driver if d) or None}
    if amd:
        product = labels.get("amd.com/gpu.product-name") or labels.get("beta.amd.com/gpu.product-name")
        vram = labels.get("amd.com/gpu.vram") or labels.get("beta.amd.com/gpu.vram")
        # AMD's node labeller writes whole GiB with a G suffix ("192G" on an MI300X)
        m = re.fullmatch(r"(\d+)\s*Gi?B?", vram or "", re.IGNORECASE)
        res = resources.get("amd.com/gpu", {})
        return {"vendor": "amd", "resource": "amd.com/gpu", "product": product, "count": res.get("allocatable", 0),
                "count_label": None, "memory_bytes": int(m.group(1)) * 1024 * MIB if m else None,
                "memory_source": "label" if m else None, "compute_capability": None, "cuda_driver": None}
    return None


def parse_node(obj: dict) -> dict:
    """One Node object (the API's JSON) -> what choosing a model needs to know about it."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    labels = meta.get("labels") or {}
    capacity, allocatable = status.get("capacity") or {}, status.get("allocatable") or {}
    resources = {r: {"capacity": int(parse_quantity(capacity.get(r)) or 0),
                     "allocatable": int(parse_quantity(allocatable.get(r)) or 0)}
                 for r in GPU_RESOURCES if r in capacity or r in allocatable}
    ready = next((c.get("status") == "True" for c in status.get("conditions") or [] if c.get("type") == "Ready"),
                 None)
    return {
        "name": meta.get("name"),
        "ready": ready,
        "schedulable": not spec.get("unschedulable", False),
        "arch": labels.get("kubernetes.io/arch"),
        "instance_type": labels.get("node.kubernetes.io/instance-type"),
        "cpu": {"capacity": parse_quantity(capacity.get("cpu")), "allocatable": parse_quantity(allocatable.get("cpu"))},
        "memory": {"capacity_bytes": _bytes(capacity.get("memory")),
                   "allocatable_bytes": _bytes(allocatable.get("memory"))},
        "gpu_resources": resources,
        "gpu": _gpu_from_labels(labels, resources),
        "taints": [{"key": t.get("key"), "value": t.get("value"), "effect": t.get("effect")}
                   for t in spec.get("taints") or []],
    }


def _bytes(quantity: str | None) -> int | None:
    value = parse_quantity(quantity)
    return int(value) if value is not None else None


def kube_config(kubeconfig: str | None, context: str | None):
    """The lightkube config to use and a description of where it came from (never its secrets)."""
    from lightkube import ConfigError, KubeConfig

    env = os.environ.get("KUBECONFIG", "")
    try:
        if kubeconfig:
            path = Path(kubeconfig).expanduser()
            if not path.is_file():
                raise ValueError(f"kubeconfig {kubeconfig} not found: give the file `kubectl` uses "
                                 "(--kubeconfig PATH, $KUBECONFIG or ~/.kube/config)")
            kc = KubeConfig.from_file(path)
        elif os.pathsep in env:
            # a list of files, as kubectl allows: lightkube reads one, so take the first that exists
            found = [p for p in env.split(os.pathsep) if p and Path(p).expanduser().is_file()]
            if not found:
                raise ValueError(f"none of the KUBECONFIG files exist ({env})")
            kc = KubeConfig.from_file(found[0])
        else:
            kc = KubeConfig.from_env()  # the pod's ServiceAccount, else $KUBECONFIG, else ~/.kube/config
        where = str(kc.fname) if kc.fname else SERVICE_ACCOUNT
        single = kc.get(context)
    except ConfigError as e:
        raise ValueError(f"no usable Kubernetes configuration ({e}): give --kubeconfig PATH, set KUBECONFIG, "
                         "write ~/.kube/config (e.g. `aws eks update-kubeconfig`, `gcloud container clusters "
                         "get-credentials`), or run in a pod with a ServiceAccount") from None
    except KeyError as e:
        raise ValueError(f"the Kubernetes configuration refers to {e}, which it does not define (a context's "
                         "cluster or user; in a pod, KUBERNETES_SERVICE_HOST)") from None
    if single.user is None:
        raise ValueError(f"context {single.context_name!r} in {where} names no user: add the credentials "
                         "(`kubectl config set-context --user ...`)")
    return single, where


def api_error(e: Exception, server: str, where: str, context: str) -> ValueError:
    import httpx2

    who = f"the Kubernetes API server {server} (context {context!r} from {where})"
    check = ("`kubectl auth can-i list nodes`" if where == SERVICE_ACCOUNT
             else f"`kubectl --kubeconfig {where} get nodes`")
    if isinstance(e, httpx2.HTTPStatusError):
        code = e.response.status_code
        status = getattr(e, "status", None)
        message = getattr(status, "message", None) or e.response.reason_phrase
        if code == 401:
            return ValueError(f"{who} refused the credentials (401 Unauthorized: {message}): the token or client "
                              "certificate is missing, wrong or expired; refresh the credentials and check with "
                              f"{check}")
        if code == 403:
            return ValueError(f"{who} does not allow this identity to list nodes (403 Forbidden: {message}). Nodes "
                              "are cluster-scoped: bind a ClusterRole with get/list on nodes, e.g. `kubectl create "
                              "clusterrole kubellm-node-reader --verb=get,list --resource=nodes` and `kubectl create "
                              "clusterrolebinding kubellm-node-reader --clusterrole=kubellm-node-reader "
                              "--serviceaccount=NAMESPACE:NAME` (or --user=NAME)")
        return ValueError(f"{who} answered {code} to GET /api/v1/nodes: {message}")
    if isinstance(e, httpx2.TimeoutException):
        return ValueError(f"{who} did not answer in time ({type(e).__name__}): check the address and the network "
                          "path to it (VPN, firewall), or raise the timeout")
    text = str(e) or type(e).__name__
    if "CERTIFICATE" in text.upper():
        return ValueError(f"cannot verify the certificate of {who} ({text}): the kubeconfig's "
                          "certificate-authority(-data) must be the cluster's CA")
    return ValueError(f"cannot reach {who} ({text}): is the cluster running and does the kubeconfig point at it? "
                      "`kubectl cluster-info` checks the same address")


def read_cluster(kubeconfig: str | None = None, context: str | None = None, chunk_size: int = 100,
                 timeout_s: float = 10.0) -> dict:
    """The cluster's nodes, listed `chunk_size` at a time (lightkube follows `continue`), with the API
    server and kubeconfig they came from."""
    try:
        import httpx2
        from lightkube import Client, ConfigError
        from lightkube.resources.core_v1 import Node
    except ImportError as e:
        raise ValueError(f"listing a cluster's nodes needs lightkube ({e}): pip install 'kubellm[cluster]'") from None
    single, where = kube_config(kubeconfig, context)
    server = single.cluster.server
    try:
        client = Client(single, timeout=httpx2.Timeout(timeout_s))
    except ConfigError as e:
        raise ValueError(f"cannot use context {single.context_name!r} from {where}: {e}") from None
    try:
        nodes = [parse_node(n.to_dict()) for n in client.list(Node, chunk_size=chunk_size)]
    except httpx2.HTTPError as e:
        raise api_error(e, server, where, single.context_name) from None
    except KeyError as e:
        # lightkube reads the Content-Type of an error answer; a proxy's plain answer may have none
        if isinstance(e.__context__, httpx2.HTTPStatusError):
            raise api_error(e.__context__, server, where, single.context_name) from None
        raise
    except ConfigError as e:  # e.g. an exec credential plugin that failed
        raise ValueError(f"cannot get credentials for context {single.context_name!r} from {where}: {e}") from None
    finally:
        client.close()
    return {"server": server, "context": single.context_name, "config": where, "nodes": nodes}


def detect_cluster(kubeconfig: str | None = None, context: str | None = None, chunk_size: int = 100,
                   timeout_s: float = 10.0) -> list[dict]:
    """The cluster's nodes (parse_node of each); errors are one ValueError naming the server and the fix."""
    return read_cluster(kubeconfig, context, chunk_size, timeout_s)["nodes"]


def run(cfg: DetectConfig) -> dict:
    result: dict[str, Any] = {"local": detect_local(use_torch=cfg.torch)}
    if cfg.cluster:
        result["cluster"] = read_cluster(cfg.kubeconfig, cfg.kube_context, cfg.chunk_size, cfg.timeout_s)
    if cfg.out:
        from steps._io import write_json

        write_json(cfg.out, result)
    return result


def _bare_flags(argv: list[str]) -> list[str]:
    """`--cluster` alone means `--cluster true`; `--json` is what the step prints anyway."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--json":
            continue
        out.append(arg)
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in ("--cluster", "--torch") and (nxt is None or nxt.startswith("-") or "=" in nxt):
            out.append("true")
    return out


if __name__ == "__main__":
    from steps._cli import main

    main(DetectConfig, run, __doc__, argv=_bare_flags(sys.argv[1:]))
