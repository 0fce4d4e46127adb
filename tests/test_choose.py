"""steps.choose: which model per role for a table of real hardware, worked out by hand from the
formula in the module docstring; the tensor-parallel rules; CPU-only machines; the -p arguments.

Hand computation (GiB = 2^30; context 4096 x concurrency 16 = 65536 tokens; utilization 0.9):

  budget per GPU = 0.9 x memory: T4 15360 MiB -> 13.50, L4 23034 MiB -> 20.245, A10G 23028 MiB -> 20.239,
                   A100 81920 MiB -> 72.00
  weights = params x 2:  Qwen2.5-3B 5.748, Qwen2.5-7B 14.185, Qwen2.5-14B 27.511, Qwen2.5-32B 61.027,
                         Qwen2.5-72B 135.426, Llama-3.1-8B 14.958, Mistral-7B 13.500, Phi-3-mini 7.117
  KV for 65536 tokens at tp 1 = 2 x layers x kv_heads x head_dim x 2 B x 65536:
        Qwen2.5-3B 36864 B -> 2.25, Qwen2.5-7B 57344 B -> 3.5, Llama-8B/Mistral 131072 B -> 8,
        Qwen2.5-14B 196608 B -> 12, Qwen2.5-32B 262144 B -> 16, Qwen2.5-72B 327680 B -> 20,
        Phi-3-mini (32 KV heads, no GQA) 393216 B -> 24
  serve(tp) = weights/tp + KV/(KV heads split over tp) + 1:
        tp 1: Qwen2.5-3B 9.00, Qwen2.5-7B 18.69, Mistral 22.50, Llama-8B 23.96, Phi-3 32.12,
              Qwen2.5-14B 40.51, Qwen2.5-32B 78.03
        Llama-8B tp 2: 7.48 + 4 + 1 = 12.48;  Qwen2.5-14B tp 2: 13.76 + 6 + 1 = 20.76
        Qwen2.5-72B tp 2: 67.71 + 10 + 1 = 78.71;  tp 4: 33.86 + 5 + 1 = 39.86
  train = 1.1 x weights + 34 x 2048 x hidden x layers + 2048 x vocab x 4 + 1:
        Qwen2.5-3B 6.323 + 4.781 + 1.159 + 1 = 13.26;   Qwen2.5-7B 15.60 + 6.51 + 1.16 + 1 = 24.27
        Phi-3-mini 7.83 + 6.38 + 0.24 + 1 = 15.45;       Qwen2.5-14B 30.26 + 15.94 + 1.16 + 1 = 48.36
        Qwen2.5-32B 90.54 (> 72)

  1x T4:    served/teacher: Qwen2.5-7B 18.69 > 13.5, Mistral/Phi-3 too; Qwen2.5-3B 9.00 fits.
            student: Qwen2.5-3B trains in 13.26 <= 13.50 (and serves in 9.00).
  1x L4:    served: Llama-8B 23.96 > 20.245; Qwen2.5-7B 18.69 fits (7.62B > Mistral's 7.25B).
            student: Qwen2.5-7B trains in 24.27 > 20.245; Phi-3 trains (15.45) but serves in 32.12;
            Qwen2.5-3B (13.26 / 9.00) fits.
  1x A100:  served: Qwen2.5-32B 78.03 > 72; Qwen2.5-14B 40.51 fits. student: Qwen2.5-14B 48.36 fits.
  8x A100:  served: Qwen2.5-72B tp 2 78.71 > 72, tp 4 39.86 fits. student: one GPU, as 1x A100.
  2x A10G:  served: Qwen2.5-14B tp 2 20.76 > 20.239; Llama-8B tp 2 12.48 fits. student: as L4.
  CPU 24 GiB: budget 21.6; served 0.501 (float32 weights) + 2 (KV space) + 2 (runtime) = 4.50;
            student also trains beside it: 0.551 + 2.241 (activations, fp32) + 0.375 + 2 = 5.17 -> 9.67.
"""

from __future__ import annotations

import copy
import json

import pytest

from steps import choose as ch
from steps import detect
from steps.choose import GIB, REGISTRY, choose, choose_all, serve_bytes, tp_options, train_bytes
from tests.test_detect import CPU_NODE, GPU_NODE

MODELS = {m.name: m for m in REGISTRY}


def local(nvidia_smi: str, memory: int = 64 * GIB) -> dict:
    """What detect_local() says on a machine whose nvidia-smi printed `nvidia_smi`."""
    return {"source": "local", "host": "box", "accelerator": "cuda", "gpu_source": "nvidia-smi",
            "gpus": detect.parse_nvidia_smi(nvidia_smi), "memory": {"total_bytes": memory, "limit_bytes": None}}


def cpu_only(memory: int) -> dict:
    return {"source": "local", "host": "laptop", "accelerator": "cpu", "gpus": [],
            "memory": {"total_bytes": memory, "available_bytes": memory // 2, "limit_bytes": None}}


def a100_cluster() -> list[dict]:
    """8x A100 80GB on one node (feature discovery labels), a cordoned 8x H100 node, a GPU node
    whose GPU memory is unknown, and a CPU node."""
    a100 = copy.deepcopy(GPU_NODE)
    a100["metadata"]["name"] = "a2-ultragpu-8g"
    a100["metadata"]["labels"]["nvidia.com/gpu.count"] = "8"
    a100["status"]["capacity"]["nvidia.com/gpu"] = a100["status"]["allocatable"]["nvidia.com/gpu"] = "8"
    h100 = copy.deepcopy(a100)
    h100["metadata"]["name"] = "a3-highgpu-8g"
    h100["metadata"]["labels"].update({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                                       "nvidia.com/gpu.compute.major": "9"})
    h100["spec"]["unschedulable"] = True
    bare = copy.deepcopy(GPU_NODE)
    bare["metadata"]["name"] = "no-gfd"
    bare["metadata"]["labels"] = {"kubernetes.io/arch": "amd64"}
    return [detect.parse_node(n) for n in (a100, h100, bare, CPU_NODE)]


T4 = "Tesla T4, 15360, 7.5, 535.104.05\n"
L4 = "NVIDIA L4, 23034, 8.9, 550.54.15\n"
A100 = "NVIDIA A100-SXM4-80GB, 81920, 8.0, 535.129.03\n"
A10G = "NVIDIA A10G, 23028, 8.6, 535.104.05\n"
QWEN = "Qwen/Qwen2.5-{}-Instruct".format

# hardware -> (student, teacher, served) as (model, GPUs); worked out in the module docstring
TABLE = {
    "1x T4": (lambda: local(T4), (QWEN("3B"), 1), (QWEN("3B"), 1), (QWEN("3B"), 1)),
    "1x L4": (lambda: local(L4), (QWEN("3B"), 1), (QWEN("7B"), 1), (QWEN("7B"), 1)),
    "1x A100 80GB": (lambda: local(A100), (QWEN("14B"), 1), (QWEN("14B"), 1), (QWEN("14B"), 1)),
    "8x A100 80GB": (a100_cluster, (QWEN("14B"), 1), (QWEN("72B"), 4), (QWEN("72B"), 4)),
    "2x A10G": (lambda: local(A10G * 2), (QWEN("3B"), 1), ("meta-llama/Llama-3.1-8B-Instruct", 2),
                ("meta-llama/Llama-3.1-8B-Instruct", 2)),
    "CPU only 24 GiB": (lambda: cpu_only(24 * GIB), ("smollm2-135m", 0), ("smollm2-135m", 0), ("smollm2-135m", 0)),
}


@pytest.mark.parametrize("name", TABLE)
def test_choice_per_role(name):
    make, *expected = TABLE[name]
    hardware = make()
    for role, (model, gpus) in zip(ch.ROLES, expected):
        got = choose(hardware, role)
        assert (got["model"], got["gpus"]) == (model, gpus), f"{name}, {role}"
        assert got["need_bytes"] <= got["budget_bytes"]
        if gpus:
            spec = next(m for m in REGISTRY if m.hub_id == model)
            assert got["tp"] in tp_options(spec, gpus) and spec.heads % got["tp"] == 0


def test_the_hand_worked_numbers():
    m = MODELS
    assert serve_bytes(m["qwen2.5-3b"], 1, 4096, 16) / GIB == pytest.approx(9.00, abs=0.005)
    assert serve_bytes(m["qwen2.5-7b"], 1, 4096, 16) / GIB == pytest.approx(18.69, abs=0.005)
    assert serve_bytes(m["qwen2.5-14b"], 2, 4096, 16) / GIB == pytest.approx(20.76, abs=0.005)
    assert serve_bytes(m["llama-3.1-8b"], 2, 4096, 16) / GIB == pytest.approx(12.48, abs=0.005)
    assert serve_bytes(m["qwen2.5-72b"], 4, 4096, 16) / GIB == pytest.approx(39.86, abs=0.005)
    assert serve_bytes(m["phi-3-mini"], 1, 4096, 16) / GIB == pytest.approx(32.12, abs=0.005)
    assert train_bytes(m["qwen2.5-3b"]) / GIB == pytest.approx(13.26, abs=0.005)
    assert train_bytes(m["qwen2.5-7b"]) / GIB == pytest.approx(24.27, abs=0.005)
    assert train_bytes(m["qwen2.5-14b"]) / GIB == pytest.approx(48.36, abs=0.005)
    assert ch.cpu_bytes(m["smollm2-135m"], "served") / GIB == pytest.approx(4.50, abs=0.005)
    assert ch.cpu_bytes(m["smollm2-135m"], "student") / GIB == pytest.approx(9.67, abs=0.005)


def test_registry_is_consistent():
    for m in REGISTRY:
        assert m.heads * m.head_dim == m.hidden, m.name
        assert m.heads % m.kv_heads == 0, m.name
    assert len({m.hub_id for m in REGISTRY}) == len(REGISTRY)
    assert [m.bundled for m in REGISTRY if m.bundled] == ["smollm2-135m"]


def test_tp_must_divide_the_heads_and_be_a_power_of_two():
    m = MODELS
    assert tp_options(m["smollm2-135m"], 8) == [1]         # 9 heads
    assert tp_options(m["qwen2.5-0.5b"], 8) == [1, 2]      # 14 heads
    assert tp_options(m["qwen2.5-7b"], 8) == [1, 2, 4]     # 28 heads
    assert tp_options(m["qwen2.5-1.5b"], 8) == [1, 2, 4]   # 12 heads; 2 KV heads, replicated at tp 4
    assert tp_options(m["qwen2.5-72b"], 8) == [1, 2, 4, 8]
    assert tp_options(m["llama-3.1-8b"], 3) == [1, 2]      # at most the node's GPUs
    # beyond its KV heads each GPU holds one replicated KV head
    assert m["qwen2.5-7b"].kv_bytes_per_token(8) == 2 * 28 * 1 * 128 * 2


def test_a_model_is_not_given_a_tp_its_heads_forbid():
    """8x T4 planned at 25% (budget 3.75 GiB per GPU): Qwen2.5-7B would fit at tp 8
    (1.773 + 0.875 + 1 = 3.65) but 28 heads forbid it, and tp 4 needs 3.546 + 0.875 + 1 = 5.42;
    Llama-8B at tp 8 needs 1.87 + 1 + 1 = 3.87 > 3.75; Mistral-7B at tp 8: 1.6875 + 1 + 1 = 3.69 fits."""
    hardware = local(T4 * 8)
    assert serve_bytes(MODELS["qwen2.5-7b"], 8, 4096, 16) <= 0.25 * 15 * GIB  # memory alone would allow it
    got = choose(hardware, "served", utilization=0.25)
    assert (got["model"], got["tp"]) == ("mistralai/Mistral-7B-Instruct-v0.3", 8)
    why = got["rejected"]["Qwen/Qwen2.5-7B-Instruct"]
    assert "at tp 4" in why and "tp 8 not allowed (28 attention heads, 4 KV heads)" in why
    assert "at tp 8 > 3.8 GiB" in got["rejected"]["meta-llama/Llama-3.1-8B-Instruct"]


def test_lower_concurrency_fits_larger_models():
    """2x A10G at concurrency 8: Qwen2.5-14B at tp 2 needs 13.76 + 3 + 1 = 17.76 <= 20.24; the student
    Phi-3-mini serves at tp 1 in 7.12 + 12 + 1 = 20.12 and trains in 15.45."""
    hardware = local(A10G * 2)
    assert (choose(hardware, "served", concurrency=8)["model"], choose(hardware, "served", concurrency=8)["tp"]) \
        == (QWEN("14B"), 2)
    assert choose(hardware, "student", concurrency=8)["model"] == "microsoft/Phi-3-mini-4k-instruct"


def test_cluster_pools_leave_out_cordoned_unknown_and_old_gpus():
    source, pools, notes = ch.pools_of(a100_cluster())
    assert source == "cluster"
    assert [(p.nodes, p.gpus) for p in pools] == [(("a2-ultragpu-8g",), 8), (("gke-ml-default-pool-0a9e3c7b-q1w2",), 0)]
    assert any("a3-highgpu-8g left out: cordoned" in n for n in notes)
    assert any("no-gfd left out: the memory" in n and "feature discovery" in n for n in notes)
    old = local("Tesla K80, 11441, 3.7, 470.57.02\n", memory=24 * GIB)
    assert choose(old, "served")["model"] == "smollm2-135m"  # below vLLM's compute capability 7.0: CPU
    assert any("below vLLM's 7.0" in n for n in choose(old, "served")["notes"])
    # the same answer from steps.detect's whole output
    assert choose({"local": cpu_only(8 * GIB), "cluster": {"nodes": a100_cluster()}}, "served")["model"] == QWEN("72B")


def test_cpu_only_small_memory_and_long_context():
    small = choose_all(cpu_only(8 * GIB))  # budget 7.2: serving 4.50 fits, serving + training 9.67 does not
    assert small["choices"]["served"]["model"] == "smollm2-135m"
    assert small["choices"]["student"]["model"] is None
    assert "9.7 GiB of memory on CPU > 7.2 GiB" in small["choices"]["student"]["why"]
    assert small["params"] == {} and small["commands"] == []
    with pytest.raises(ch.NoFit, match="context is at most 8192"):
        choose(cpu_only(64 * GIB), "served", context=16384)
    with pytest.raises(ValueError, match="role 'judge'"):
        choose(cpu_only(64 * GIB), "judge")
    # T4 float16: compute capability 7.5 has no bf16
    assert choose(local(T4), "served")["dtype"] == "float16"
    assert choose(local(A100), "served")["dtype"] == "bfloat16"


def test_argo_arguments():
    t4 = choose_all(local(T4))
    assert t4["argo_args"] == f"-p student={QWEN('3B')} -p teacher={QWEN('3B')} -p gpus=1"
    assert t4["commands"] == ["kubellm compile distill -p gpus=1 -o distill.yaml",
                              f"argo submit distill.yaml {t4['argo_args']} --watch"]
    l4 = choose_all(local(L4))  # a larger teacher than the student needs its own server
    assert l4["params"] == {"student": QWEN("3B"), "teacher": QWEN("7B"), "teacher-url": "TEACHER_URL", "gpus": "1"}
    assert any("TEACHER_URL" in n and "--tensor-parallel-size 1" in n for n in l4["notes"])
    big = choose_all(a100_cluster())
    assert big["choices"]["served"]["argo_args"] == \
        """-p models='[{"name": "Qwen/Qwen2.5-72B-Instruct", "gpus": 4}]'"""
    cpu = choose_all(cpu_only(24 * GIB))
    assert cpu["params"] == {"student": "smollm2-135m", "teacher": "smollm2-135m", "gpus": "0"}
    assert cpu["commands"] == ["kubellm run distill -p student=smollm2-135m -p teacher=smollm2-135m"]


def test_kubellm_choose_from_a_detect_file(tmp_path, capsys):
    from workflows.cli import main

    hw = tmp_path / "hw.json"
    hw.write_text(json.dumps({"local": cpu_only(8 * GIB), "cluster": {"nodes": a100_cluster()}}))
    assert main(["choose", "--from", str(hw), "--json", "--concurrency", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads(json.dumps(choose_all(json.loads(hw.read_text()), concurrency=8)))
    assert out["choices"]["served"]["model"] == QWEN("72B")
    with pytest.raises(SystemExit, match="not local, cluster, or a readable steps.detect JSON file"):
        main(["choose", "--from", str(tmp_path / "missing.json")])
    with pytest.raises(SystemExit, match="concurrency"):
        main(["choose", "--from", str(hw), "--concurrency", "0"])


def test_pick_auto_writes_the_choice_for_a_workflow_and_keeps_a_named_model(tmp_path, monkeypatch):
    hw = tmp_path / "hw.json"
    hw.write_text(json.dumps(local(L4)))
    res = ch.run(ch.ChooseConfig(hardware=str(hw), pick="auto", role="served", out_param=str(tmp_path / "m")))
    assert res["picked"] == QWEN("7B") and res["chosen"] is True
    assert (tmp_path / "m").read_text() == QWEN("7B")
    res = ch.run(ch.ChooseConfig(hardware=str(hw), pick="auto", role="student", out_param=str(tmp_path / "s")))
    assert (tmp_path / "s").read_text() == QWEN("3B")
    # a named model passes through untouched, without reading any hardware
    res = ch.run(ch.ChooseConfig(hardware="/no/such/file", pick="gemma3-270m", out_param=str(tmp_path / "g")))
    assert res == {"picked": "gemma3-270m", "chosen": False} and (tmp_path / "g").read_text() == "gemma3-270m"
    # nothing fits: one message, naming the role and the way out
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps(cpu_only(1 * GIB)))
    with pytest.raises(ValueError, match=r"model=auto: no model fits the served role .*name a model instead"):
        ch.run(ch.ChooseConfig(hardware=str(tiny), pick="auto", out_param=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()
    # auto hardware outside a pod is this machine
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert ch.in_pod() is False
