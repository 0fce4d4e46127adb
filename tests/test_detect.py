"""steps.detect: the parsers on recorded command outputs, this real machine (no GPU: cpu), and
detect_cluster against a real Kubernetes-like API server on loopback (plain HTTP, a bearer token,
two pages of recorded Node objects, and the 401/403/connection-refused answers)."""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from steps import detect
from tests.apiserver import TOKEN, ApiServer, no_proxy, write_kubeconfig  # noqa: F401 (no_proxy: autouse)

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20

# nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version --format=csv,noheader,nounits
NVIDIA_SMI_T4 = "Tesla T4, 15360, 7.5, 535.104.05\n"
NVIDIA_SMI_4xA100 = "".join("NVIDIA A100-SXM4-80GB, 81920, 8.0, 535.129.03\n" for _ in range(4))
# a driver older than R510 queried without compute_cap; a field it cannot report
NVIDIA_SMI_OLD = "Tesla V100-SXM2-16GB, 16160, [N/A]\n"

# rocm-smi --showproductname --showmeminfo vram --json (ROCm 6.x, with the warning some builds print first)
ROCM_SMI = """WARNING: AMD GPU device(s) is/are in a low-power state. Check power control/runtime_status

{"card0": {"VRAM Total Memory (B)": "68702699520", "VRAM Total Used Memory (B)": "10960896",
  "Card Series": "AMD Instinct MI210", "Card Model": "0x740f", "Card Vendor": "Advanced Micro Devices, Inc. [AMD/ATI]",
  "Card SKU": "D67301", "Subsystem ID": "0x0c34", "Device Rev": "0x02", "Node ID": "2", "GUID": "11743",
  "GFX Version": "gfx90a"},
 "card1": {"VRAM Total Memory (B)": "68702699520", "VRAM Total Used Memory (B)": "10960896",
  "Card Series": "AMD Instinct MI210", "Card Model": "0x740f", "Card Vendor": "Advanced Micro Devices, Inc. [AMD/ATI]",
  "Card SKU": "D67301", "Subsystem ID": "0x0c34", "Device Rev": "0x02", "Node ID": "3", "GUID": "52811",
  "GFX Version": "gfx90a"},
 "system": {"Driver version": "6.8.5"}}
"""
# ROCm 5.x spelled the keys differently
ROCM_SMI_LEGACY = json.dumps({"card0": {"Card series": "Radeon RX 6800 XT", "Card model": "0x744c",
                                        "Card vendor": "Advanced Micro Devices, Inc. [AMD/ATI]", "Card SKU": "D41205",
                                        "VRAM Total Memory (B)": "17163091968",
                                        "VRAM Total Used Memory (B)": "5368709120"}})

CPUINFO_X86 = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 arat avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq la57 rdpid cldemote movdiri movdir64b fsrm md_clear serialize tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8 arch_capabilities

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile avx512_vnni

"""
CPUINFO_OLD_X86 = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz
flags\t\t: fpu vme de pse tsc sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c rdrand avx2 bmi2

"""
CPUINFO_ARM = """processor\t: 0
BogoMIPS\t: 2000.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd4f
CPU revision\t: 1

processor\t: 1
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve
CPU implementer\t: 0x41
CPU part\t: 0xd4f

"""
MEMINFO = """MemTotal:       32809468 kB
MemFree:         1563100 kB
MemAvailable:   27061380 kB
Buffers:          602528 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


def test_nvidia_smi_lines_become_gpus_with_memory_in_bytes():
    (t4,) = detect.parse_nvidia_smi(NVIDIA_SMI_T4)
    assert t4 == {"index": 0, "vendor": "nvidia", "name": "Tesla T4", "memory_bytes": 15360 * MIB,
                  "compute_capability": "7.5", "driver": "535.104.05"}
    a100 = detect.parse_nvidia_smi(NVIDIA_SMI_4xA100)
    assert [g["index"] for g in a100] == [0, 1, 2, 3]
    assert {g["memory_bytes"] for g in a100} == {80 * 1024 * MIB}
    (old,) = detect.parse_nvidia_smi(NVIDIA_SMI_OLD, ("name", "memory.total", "driver_version"))
    assert old["name"] == "Tesla V100-SXM2-16GB" and old["driver"] is None and old["compute_capability"] is None
    assert detect.parse_nvidia_smi("") == []
    with pytest.raises(ValueError, match="4 fields"):
        detect.parse_nvidia_smi("Tesla T4, 15360\n")


def test_rocm_smi_json_with_warning_lines_and_both_key_spellings():
    cards = detect.parse_rocm_smi(ROCM_SMI)
    assert [(g["index"], g["name"], g["memory_bytes"], g["gfx_version"], g["driver"]) for g in cards] == [
        (0, "AMD Instinct MI210", 68702699520, "gfx90a", "6.8.5"),
        (1, "AMD Instinct MI210", 68702699520, "gfx90a", "6.8.5")]
    assert {g["vendor"] for g in cards} == {"amd"}
    (rx,) = detect.parse_rocm_smi(ROCM_SMI_LEGACY)
    assert rx["name"] == "Radeon RX 6800 XT" and rx["memory_bytes"] == 17163091968
    assert detect.parse_rocm_smi("ERROR: No AMD GPUs specified\n") == []


def test_cpuinfo_flags_of_interest_on_x86_and_arm():
    x86 = detect.parse_cpuinfo(CPUINFO_X86)
    assert x86 == {"model": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "processors": 2,
                   "flags": ["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"]}
    assert detect.parse_cpuinfo(CPUINFO_OLD_X86)["flags"] == ["avx2"]
    arm = detect.parse_cpuinfo(CPUINFO_ARM)
    # aarch64 reports NEON as asimd; no model name line, so the implementer and part name the core
    assert arm == {"model": "ARM implementer 0x41 part 0xd4f", "processors": 2, "flags": ["neon", "sve"]}


def test_meminfo_and_cgroup_limits():
    assert detect.parse_meminfo(MEMINFO) == {"total_bytes": 32809468 * 1024, "available_bytes": 27061380 * 1024}
    assert detect.parse_cgroup_memory("max\n") is None
    assert detect.parse_cgroup_memory("9223372036854771712\n") is None  # cgroup v1 without a limit
    assert detect.parse_cgroup_memory("17179869184\n") == 16 << 30
    assert detect.parse_cgroup_cpu("200000 100000\n") == 2.0
    assert detect.parse_cgroup_cpu("max 100000\n") is None


def test_kubernetes_quantities():
    q = detect.parse_quantity
    assert q("7910m") == pytest.approx(7.91)
    assert q("65843920Ki") == 65843920 * 1024
    assert q("32Gi") == 32 << 30
    assert q("4") == 4 and q("1.5") == 1.5 and q("2e3") == 2000 and q("1M") == 10 ** 6
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        q("lots")


def test_detect_local_on_this_machine_says_cpu():
    hw = detect.detect_local()
    assert hw["accelerator"] == "cpu" and hw["gpus"] == [] and hw["gpu_source"] is None
    assert hw["cpu"]["usable_cores"] >= 1 and hw["cpu"]["logical_cores"] >= hw["cpu"]["usable_cores"]
    assert hw["cpu"]["model"]
    assert hw["memory"]["total_bytes"] > hw["memory"]["available_bytes"] > 0
    json.dumps(hw)  # plain JSON


# ---- a cluster ----------------------------------------------------------------------------------

# Recorded from a GKE node with four A100 80GB GPUs (GPU operator: feature discovery labels) and a
# plain CPU node; names, uids and addresses changed.
GPU_NODE = {
    "metadata": {
        "name": "gke-ml-a2-ultragpu-4g-pool-6f2c9d1e-x7k2", "uid": "3c1f7f0e-9b7a-4f62-8a77-2d9f9f1b1c11",
        "resourceVersion": "48211927", "creationTimestamp": "2026-10-02T08:14:51Z",
        "labels": {
            "beta.kubernetes.io/arch": "amd64", "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
            "kubernetes.io/hostname": "gke-ml-a2-ultragpu-4g-pool-6f2c9d1e-x7k2",
            "node.kubernetes.io/instance-type": "a2-ultragpu-4g",
            "cloud.google.com/gke-accelerator": "nvidia-a100-80gb",
            "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
            "nvidia.com/gpu.memory": "81920", "nvidia.com/gpu.count": "4", "nvidia.com/gpu.family": "ampere",
            "nvidia.com/gpu.compute.major": "8", "nvidia.com/gpu.compute.minor": "0",
            "nvidia.com/cuda.driver.major": "535", "nvidia.com/cuda.driver.minor": "104",
            "nvidia.com/cuda.driver.rev": "05", "nvidia.com/cuda.runtime.major": "12",
            "nvidia.com/cuda.runtime.minor": "2", "nvidia.com/mig.capable": "true",
        },
        "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                        "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
    },
    "spec": {"podCIDR": "10.4.3.0/24", "providerID": "gce://ml-project/us-central1-c/gke-ml-a2-x7k2",
             "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
    "status": {
        "capacity": {"cpu": "48", "ephemeral-storage": "98831908Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
                     "memory": "348068584Ki", "nvidia.com/gpu": "4", "pods": "110"},
        "allocatable": {"cpu": "47780m", "ephemeral-storage": "47060071478", "hugepages-1Gi": "0",
                        "hugepages-2Mi": "0", "memory": "336487656Ki", "nvidia.com/gpu": "4", "pods": "110"},
        "conditions": [
            {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2026-12-01T10:02:11Z",
             "lastTransitionTime": "2026-10-02T08:14:51Z", "reason": "KubeletHasSufficientMemory",
             "message": "kubelet has sufficient memory available"},
            {"type": "DiskPressure", "status": "False", "lastHeartbeatTime": "2026-12-01T10:02:11Z",
             "lastTransitionTime": "2026-10-02T08:14:51Z", "reason": "KubeletHasNoDiskPressure",
             "message": "kubelet has no disk pressure"},
            {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-12-01T10:02:11Z",
             "lastTransitionTime": "2026-10-02T08:15:32Z", "reason": "KubeletReady",
             "message": "kubelet is posting ready status. AppArmor enabled"}],
        "addresses": [{"type": "InternalIP", "address": "10.128.0.41"},
                      {"type": "Hostname", "address": "gke-ml-a2-ultragpu-4g-pool-6f2c9d1e-x7k2"}],
        "nodeInfo": {"machineID": "5d2a0f0c1e9b4a8f", "systemUUID": "5d2a0f0c-1e9b-4a8f", "bootID": "b1c2",
                     "kernelVersion": "6.1.100+", "osImage": "Container-Optimized OS from Google",
                     "containerRuntimeVersion": "containerd://1.7.22", "kubeletVersion": "v1.30.5-gke.1014001",
                     "kubeProxyVersion": "v1.30.5-gke.1014001", "operatingSystem": "linux",
                     "architecture": "amd64"},
    },
}
CPU_NODE = {
    "metadata": {
        "name": "gke-ml-default-pool-0a9e3c7b-q1w2", "uid": "9d0b1e55-1c8e-4a3b-b0a6-7f4e2c5d8e90",
        "resourceVersion": "48211800", "creationTimestamp": "2026-09-14T12:00:03Z",
        "labels": {"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
                   "kubernetes.io/hostname": "gke-ml-default-pool-0a9e3c7b-q1w2",
                   "node.kubernetes.io/instance-type": "e2-standard-8"},
    },
    "spec": {"podCIDR": "10.4.0.0/24", "providerID": "gce://ml-project/us-central1-c/gke-ml-default-q1w2"},
    "status": {
        "capacity": {"cpu": "8", "memory": "32876608Ki", "pods": "110"},
        "allocatable": {"cpu": "7910m", "memory": "29199424Ki", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-12-01T10:01:58Z",
                        "lastTransitionTime": "2026-09-14T12:00:44Z", "reason": "KubeletReady",
                        "message": "kubelet is posting ready status"}],
        "nodeInfo": {"kubeletVersion": "v1.30.5-gke.1014001", "operatingSystem": "linux",
                     "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": "",
                     "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "", "kubeProxyVersion": ""},
    },
}
NODES = [GPU_NODE, CPU_NODE]
FORBIDDEN = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
             "message": 'nodes is forbidden: User "system:serviceaccount:ml:kubellm" cannot list resource "nodes" '
                        'in API group "" at the cluster scope',
             "reason": "Forbidden", "details": {"kind": "nodes"}, "code": 403}
UNAUTHORIZED = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "Unauthorized", "reason": "Unauthorized", "code": 401}


def test_parse_node_reads_resources_labels_taints_and_readiness():
    gpu = detect.parse_node(GPU_NODE)
    assert gpu["name"] == "gke-ml-a2-ultragpu-4g-pool-6f2c9d1e-x7k2" and gpu["ready"] is True
    assert gpu["gpu_resources"] == {"nvidia.com/gpu": {"capacity": 4, "allocatable": 4}}
    assert gpu["gpu"] == {"vendor": "nvidia", "resource": "nvidia.com/gpu", "product": "NVIDIA-A100-SXM4-80GB",
                          "count": 4, "count_label": 4, "memory_bytes": 81920 * MIB, "memory_source": "label",
                          "compute_capability": "8.0", "cuda_driver": "535.104.05"}
    assert gpu["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert gpu["cpu"] == {"capacity": 48.0, "allocatable": 47.78}
    assert gpu["memory"]["allocatable_bytes"] == 336487656 * 1024
    assert gpu["instance_type"] == "a2-ultragpu-4g" and gpu["arch"] == "amd64"
    cpu = detect.parse_node(CPU_NODE)
    assert cpu["gpu"] is None and cpu["gpu_resources"] == {} and cpu["taints"] == []
    assert cpu["cpu"]["allocatable"] == pytest.approx(7.91)
    # without feature discovery the memory comes from the product name; AMD's labeller writes GiB
    bare = copy.deepcopy(GPU_NODE)
    bare["metadata"]["labels"] = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert detect.parse_node(bare)["gpu"]["memory_source"] == "product name"
    amd = {"metadata": {"name": "mi300", "labels": {"amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM",
                                                    "amd.com/gpu.vram": "192G"}},
           "status": {"capacity": {"amd.com/gpu": "8"}, "allocatable": {"amd.com/gpu": "8"},
                      "conditions": [{"type": "Ready", "status": "False"}]},
           "spec": {"unschedulable": True}}
    node = detect.parse_node(amd)
    assert node["gpu"]["vendor"] == "amd" and node["gpu"]["count"] == 8
    assert node["gpu"]["memory_bytes"] == 192 << 30
    assert node["ready"] is False and node["schedulable"] is False


def node_server(**kw) -> ApiServer:
    """The loopback API server with NODES at /api/v1/nodes (continue tokens "page-at-N")."""
    return ApiServer({"/api/v1/nodes": NODES}, continue_prefix="page-at-", **kw)


def test_detect_cluster_pages_through_nodes_with_the_bearer_token(tmp_path):
    with node_server() as api:
        kubeconfig = write_kubeconfig(tmp_path / "config", api.url)
        found = detect.read_cluster(str(kubeconfig), chunk_size=1)
    nodes = found["nodes"]
    assert [n["name"] for n in nodes] == [GPU_NODE["metadata"]["name"], CPU_NODE["metadata"]["name"]]
    assert nodes == [detect.parse_node(GPU_NODE), detect.parse_node(CPU_NODE)]
    assert found["server"] == api.url and found["context"] == "ml" and found["config"] == str(kubeconfig)
    # two pages: the limit on each, the continue token of the first answer on the second request
    assert [r["path"] for r in api.requests] == ["/api/v1/nodes", "/api/v1/nodes"]
    assert [r["query"].get("limit") for r in api.requests] == ["1", "1"]
    assert "continue" not in api.requests[0]["query"] and api.requests[1]["query"]["continue"] == "page-at-1"
    assert {r["authorization"] for r in api.requests} == {f"Bearer {TOKEN}"}
    assert TOKEN not in json.dumps(found)


def test_detect_cluster_in_one_page_and_from_kubeconfig_env(tmp_path, monkeypatch):
    with node_server() as api:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", api.url)))
        nodes = detect.detect_cluster()
    assert len(nodes) == 2 and nodes[0]["gpu"]["count"] == 4
    assert len(api.requests) == 1 and api.requests[0]["query"]["limit"] == "100"


@pytest.mark.parametrize("status, expected", [
    (FORBIDDEN, ["403 Forbidden", "cannot list resource", "ClusterRole", "kubectl create clusterrolebinding"]),
    (UNAUTHORIZED, ["401 Unauthorized", "missing, wrong or expired"])])
def test_detect_cluster_refused_is_one_clear_message(tmp_path, status, expected):
    with node_server(error=status) as api:
        kubeconfig = write_kubeconfig(tmp_path / "config", api.url)
        with pytest.raises(ValueError) as err:
            detect.detect_cluster(str(kubeconfig))
    message = str(err.value)
    assert api.url in message and str(kubeconfig) in message
    for text in expected:
        assert text in message
    assert api.requests[0]["authorization"] == f"Bearer {TOKEN}"  # sent, but never shown
    assert TOKEN not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained traceback


def test_an_error_answer_without_content_type_is_still_one_message(tmp_path):
    """A proxy in front of the API server may answer without a Content-Type, which lightkube's own
    error decoding trips over."""
    gateway = {"code": 502, "message": "upstream connect error"}
    with node_server(error=gateway, send_content_type=False) as api:
        kubeconfig = write_kubeconfig(tmp_path / "config", api.url)
        with pytest.raises(ValueError, match=rf"{api.url} .* answered 502 to GET /api/v1/nodes: Bad Gateway"):
            detect.detect_cluster(str(kubeconfig))


def test_detect_cluster_connection_refused_and_missing_config(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = write_kubeconfig(tmp_path / "config", f"http://127.0.0.1:{port}")
    with pytest.raises(ValueError, match=rf"cannot reach the Kubernetes API server http://127.0.0.1:{port}.*"
                                         r"kubectl cluster-info") as err:
        detect.detect_cluster(str(kubeconfig), timeout_s=5)
    assert TOKEN not in str(err.value)
    with pytest.raises(ValueError, match="kubeconfig .* not found"):
        detect.detect_cluster(str(tmp_path / "nope"))


def test_kubellm_detect_cli_shows_the_refusal_without_traceback(tmp_path, capsys):
    from workflows.cli import main

    with node_server(error=FORBIDDEN) as api:
        kubeconfig = write_kubeconfig(tmp_path / "config", api.url)
        with pytest.raises(SystemExit) as err:
            main(["detect", "--cluster", "--kubeconfig", str(kubeconfig)])
    assert str(err.value).startswith("kubellm detect: the Kubernetes API server") and "ClusterRole" in str(err.value)
    assert TOKEN not in str(err.value) + capsys.readouterr().out
    with node_server() as api:
        kubeconfig = write_kubeconfig(tmp_path / "config", api.url)
        out = tmp_path / "hw.json"
        assert main(["detect", "--cluster", "--kubeconfig", str(kubeconfig), "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["local"]["accelerator"] == "cpu" and len(printed["cluster"]["nodes"]) == 2


def test_step_cli_and_light_imports(tmp_path):
    """`python -m steps.detect --cluster` (a bare flag) against the loopback server; importing the
    detect and choose steps loads neither lightkube nor torch."""
    with node_server() as api:
        kubeconfig = write_kubeconfig(tmp_path / "config", api.url)
        done = subprocess.run([sys.executable, "-m", "steps.detect", "--cluster", "--kubeconfig", str(kubeconfig),
                               "--torch", "false", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["cluster"]["nodes"]) == 2
    done = subprocess.run([sys.executable, "-c", "import sys, steps.detect, steps.choose; "
                           "print([m for m in ('lightkube', 'httpx2', 'torch') if m in sys.modules])"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr
