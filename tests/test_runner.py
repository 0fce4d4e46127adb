"""The local runner executes rendered Workflows with real processes, as Argo would.

Each fixture in tests/fixtures/workflows is a hand-written Workflow whose steps are tiny
`python -c` programs; the tests check what ran, in which order, and what came out.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import socket
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from workflows.runner import WorkflowError, check_supported, eval_when, load_workflow, run_file, run_workflow

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_pipeline_order_parameters_artifacts_fanout_and_when(tmp_path):
    console = quiet()
    result = run_file(FIXTURES / "pipeline.yaml", tmp_path, console=console)

    assert result.phase == "Succeeded", result.message
    order = lines(tmp_path / "volumes" / "shared" / "order.log")
    assert order[0] == "gen"
    assert sorted(order) == sorted(["gen", "shout-a", "shout-b", "shout-c", "collect", "yes", "pair-1-one", "pair-2-two"])
    assert order.index("collect") > max(order.index(f"shout-{x}") for x in "abc")
    # artifact passed by path, parameters through files, fan-out aggregated as Argo does
    assert result.nodes["shout.1"]["outputs"]["parameters"] == {"upper": "hello-B"}
    assert result.nodes["gen"]["outputs"]["parameters"] == {"items": '["a", "b", "c"]', "count": "3"}
    report = Path(result.nodes["collect"]["outputs"]["artifacts"]["report"])
    assert report == tmp_path / "nodes" / "collect" / "artifacts" / "report"
    assert json.loads(report.read_text()) == ["hello-A", "hello-B", "hello-C"]
    assert result.nodes["when-yes"]["phase"] == "Succeeded"
    assert result.nodes["when-no"]["phase"] == "Skipped"
    assert "no" not in order
    # bookkeeping: status per node, run summary, progress env, plain log lines when not a TTY
    status = json.loads((tmp_path / "nodes" / "gen" / "status.json").read_text())
    assert status["phase"] == "Succeeded" and status["attempts"] == 1 and status["exit_code"] == 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["phase"] == "Succeeded" and run["wall_s"] >= run["overhead_s"] >= 0
    assert set(run["nodes"]) >= {"gen", "shout.0", "collect"}
    assert "gen" in console.file.getvalue() and "Succeeded" in console.file.getvalue()


def test_parameter_override_reaches_the_steps(tmp_path):
    result = run_file(FIXTURES / "pipeline.yaml", tmp_path, parameters={"greeting": "hi", "mode": "slow"}, console=quiet())
    assert result.ok
    assert result.nodes["shout.0"]["outputs"]["parameters"]["upper"] == "hi-A"
    assert result.nodes["when-no"]["phase"] == "Succeeded"


def test_depends_results_failed_skipped_and_omitted(tmp_path):
    result = run_file(FIXTURES / "depends.yaml", tmp_path, console=quiet())

    phases = {k: v["phase"] for k, v in result.nodes.items()}
    assert phases == {"bad": "Failed", "on-fail": "Succeeded", "after-bad": "Omitted", "skipped": "Skipped",
                      "after-skip": "Succeeded", "skip-only": "Succeeded", "either": "Succeeded",
                      "legacy.skipped": "Skipped", "legacy.after": "Succeeded"}
    assert sorted(lines(tmp_path / "volumes" / "shared" / "ran.log")) == ["after-skip", "either", "legacy", "on-fail", "skip-only"]
    # the omitted leaf inherits bad's failure, so the run fails (Argo's branch-phase rule)
    assert result.phase == "Failed" and result.failed_node == "bad"
    assert "failing on purpose" in result.log_tail


def test_failure_handled_by_depends_failed_lets_the_run_succeed(tmp_path):
    doc = load_workflow(FIXTURES / "depends.yaml")
    tasks = doc["spec"]["templates"][-1]["dag"]["tasks"]
    tasks[:] = [t for t in tasks if t["name"] != "after-bad"]
    result = run_workflow(doc, tmp_path, console=quiet())
    assert result.phase == "Succeeded"
    assert result.nodes["bad"]["phase"] == "Failed" and result.nodes["on-fail"]["phase"] == "Succeeded"


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie waits for PID 1 to reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct ports that were free a moment ago (all bound at once, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_daemon_reached_through_task_ip_and_stopped_afterwards(tmp_path):
    port = free_port()
    doc = yaml.safe_load((FIXTURES / "daemon.yaml").read_text().replace("18765", str(port)))
    result = run_workflow(doc, tmp_path, console=quiet())

    assert result.ok, result.message
    assert result.nodes["ask"]["outputs"]["parameters"]["reply"] == "pong"
    assert result.nodes["srv"]["phase"] == "Succeeded" and "stopped" in result.nodes["srv"]["message"]
    assert not alive(int((tmp_path / "volumes" / "shared" / "server.pid").read_text()))
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_daemon_that_exits_before_ready_fails_with_its_log(tmp_path):
    doc = load_workflow(FIXTURES / "daemon.yaml")
    doc["spec"]["templates"][0]["container"]["args"][0] = "import sys; print('no model file'); sys.exit(2)"
    result = run_workflow(doc, tmp_path, console=quiet())
    assert result.phase == "Failed"
    assert result.nodes["srv"]["phase"] == "Failed"
    assert "before it was ready" in result.nodes["srv"]["message"] and "no model file" in result.nodes["srv"]["message"]
    assert result.nodes["ask"]["phase"] == "Omitted"


def test_retry_strategy_retries_with_backoff(tmp_path):
    result = run_file(FIXTURES / "retry.yaml", tmp_path, console=quiet())
    assert result.ok, result.message
    node = result.nodes["flaky"]
    assert node["attempts"] == 3 and node["outputs"]["parameters"]["tries"] == "3"
    assert lines(tmp_path / "volumes" / "shared" / "count.retries") == ["0", "1", "2"]  # {{retries}}
    assert node["duration_s"] >= 0.3  # 100ms then 200ms of backoff
    assert (tmp_path / "nodes" / "flaky" / "log.txt").read_text().count("=== attempt") == 3


def test_retry_limit_exhausted_fails(tmp_path):
    doc = load_workflow(FIXTURES / "retry.yaml")
    doc["spec"]["templates"][0]["retryStrategy"]["limit"] = 1
    result = run_workflow(doc, tmp_path, console=quiet())
    assert result.phase == "Failed" and result.nodes["flaky"]["attempts"] == 2
    assert "attempt 2 fails on purpose" in result.log_tail


def test_resume_skips_succeeded_nodes(tmp_path):
    shared = tmp_path / "volumes" / "shared"
    shared.mkdir(parents=True)
    (shared / "fail").touch()
    first = run_file(FIXTURES / "resume.yaml", tmp_path, console=quiet())
    assert first.phase == "Failed" and first.failed_node == "second"
    assert first.nodes["first"]["phase"] == "Succeeded"
    assert (shared / "first.count").read_text() == "1"

    (shared / "fail").unlink()
    console = quiet()
    second = run_file(FIXTURES / "resume.yaml", tmp_path, console=console)
    assert second.ok, second.message
    assert (shared / "first.count").read_text() == "1"  # not run again
    assert second.nodes["first"]["reused"] and not second.nodes["second"]["reused"]
    assert Path(second.nodes["second"]["outputs"]["artifacts"]["final"]).read_text() == "v1!"
    assert "reused" in console.file.getvalue()
    # run.json keeps both invocations: the whole time of the run, from its first start
    run = json.loads((tmp_path / "run.json").read_text())
    assert [(i["phase"], i["wall_s"]) for i in run["invocations"]] == [("Failed", first.wall_s),
                                                                       ("Succeeded", second.wall_s)]
    assert run["invocations"][0]["message"].startswith("second:")
    assert run["total_wall_s"] == round(first.wall_s + second.wall_s, 3) and run["wall_s"] == second.wall_s
    assert run["invocations"][0]["started"] <= run["invocations"][1]["started"] == run["started"]


def test_resume_with_other_parameters_or_spec_is_refused(tmp_path):
    assert run_file(FIXTURES / "resume.yaml", tmp_path, console=quiet()).ok
    with pytest.raises(WorkflowError, match=r"parameter tag: 'v1' -> 'v2'(.|\n)*new --out"):
        run_file(FIXTURES / "resume.yaml", tmp_path, parameters={"tag": "v2"}, console=quiet())
    doc = load_workflow(FIXTURES / "resume.yaml")
    doc["spec"]["templates"][1]["container"]["args"][2] = "/out/other.txt"
    with pytest.raises(WorkflowError, match=r"spec\.templates\[1\]\.container\.args\[2\]"):
        run_workflow(doc, tmp_path, console=quiet())


def test_unsupported_fields_fail_before_any_node_runs(tmp_path):
    with pytest.raises(WorkflowError) as err:
        run_file(FIXTURES / "unsupported.yaml", tmp_path, console=quiet())
    message = str(err.value)
    assert "spec.templates[1].script: not supported by the local runner (supported: " in message
    assert "spec.templates[0].container.envFrom: not supported" in message
    assert not (tmp_path / "nodes").exists() and not (tmp_path / "volumes").exists()


def test_cluster_only_fields_are_ignored_but_typos_are_not(tmp_path):
    doc = load_workflow(FIXTURES / "pipeline.yaml")
    assert check_supported(doc) == []  # resources, imagePullPolicy, podGC, archive, labels, ...
    doc["spec"]["templates"][0]["container"]["comand"] = ["python"]
    assert check_supported(doc) == [
        "spec.templates[0].container.comand: not supported by the local runner (supported: args, command, env, "
        "readinessProbe, volumeMounts, workingDir)"]


def test_unknown_variable_is_an_error_naming_the_field(tmp_path):
    doc = load_workflow(FIXTURES / "pipeline.yaml")
    doc["spec"]["templates"][0]["container"]["args"][1] = "{{inputs.parameters.greting}}"
    with pytest.raises(WorkflowError, match=r"spec\.templates\[0\]\.container\.args\[1\]: unknown variable "
                                            r"'\{\{inputs\.parameters\.greting\}\}'"):
        run_workflow(doc, tmp_path, console=quiet())
    doc = load_workflow(FIXTURES / "pipeline.yaml")
    doc["spec"]["templates"][-1]["dag"]["tasks"][3]["when"] = "{{tasks.shout.outputs.parameters.upper}} == x"
    with pytest.raises(WorkflowError, match=r"tasks\[3\]\.when: .*task 'shout', which this task does not depend on"):
        run_workflow(doc, tmp_path, console=quiet())


def test_parameter_enum_and_unknown_names_are_rejected(tmp_path):
    with pytest.raises(WorkflowError, match=r"parameter 'mode'='turbo' is not allowed; allowed values: fast, slow"):
        run_file(FIXTURES / "pipeline.yaml", tmp_path, parameters={"mode": "turbo"}, console=quiet())
    with pytest.raises(WorkflowError, match=r"unknown parameter\(s\) greetng; this workflow takes: greeting, mode"):
        run_file(FIXTURES / "pipeline.yaml", tmp_path, parameters={"greetng": "x"}, console=quiet())


def intervals(folder: Path, names: str) -> list[tuple[float, float]]:
    stamps = [json.loads((folder / f"{n}.json").read_text()) for n in names]
    return sorted((s["start"], s["end"]) for s in stamps)


def overlapping(spans: list[tuple[float, float]]) -> bool:
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_semaphore_limits_concurrency_even_with_free_jobs(tmp_path):
    result = run_file(FIXTURES / "sync.yaml", tmp_path, jobs=2, console=quiet())
    assert result.ok
    folder = tmp_path / "volumes" / "shared"
    assert not overlapping(intervals(folder, "ab"))  # semaphore gpu: default limit 1
    assert overlapping(intervals(folder, "abcd"))  # jobs=2 does run two at once


def test_parallelism_one_runs_nodes_one_at_a_time(tmp_path):
    result = run_file(FIXTURES / "sync.yaml", tmp_path, semaphore_limits={"kubellm-semaphores/gpu": 2}, console=quiet())
    assert result.ok  # no spec.parallelism, no jobs: one node at a time on this 2-core machine
    assert not overlapping(intervals(tmp_path / "volumes" / "shared", "abcd"))


def test_nested_dag_fan_out_with_dag_outputs(tmp_path):
    result = run_file(FIXTURES / "nested.yaml", tmp_path, console=quiet())
    assert result.ok, result.message
    assert result.nodes["inner.0.second"]["outputs"]["parameters"]["out"] == "xx"
    assert result.nodes["final"]["outputs"]["parameters"]["out"] == '["xx","yy"]'


def one_task(container: dict, **template: object) -> dict:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "t"},
            "spec": {"entrypoint": "main", "templates": [
                {"name": "step", "container": {"image": "python:3.11", **container}, **template},
                {"name": "main", "dag": {"tasks": [{"name": "step", "template": "step"}]}}]}}


def test_missing_output_artifact_fails_the_node_naming_it(tmp_path):
    doc = one_task({"command": ["python", "-c", "pass"]}, outputs={"artifacts": [{"name": "model", "path": "/out/model"}]})
    result = run_workflow(doc, tmp_path, console=quiet())
    assert result.phase == "Failed"
    assert result.nodes["step"]["phase"] == "Error" and "output artifact 'model'" in result.nodes["step"]["message"]


def test_active_deadline_kills_the_node(tmp_path):
    doc = one_task({"command": ["python", "-c", "import time; time.sleep(30)"]}, activeDeadlineSeconds=1)
    result = run_workflow(doc, tmp_path, console=quiet())
    assert result.phase == "Failed" and "activeDeadlineSeconds" in result.nodes["step"]["message"]
    assert result.wall_s < 30  # the step alone sleeps 30 s: it was killed, not waited for


def test_when_expressions():
    assert eval_when("3 == 3") and eval_when("heads != tails") and eval_when("'a b' == \"a b\"")
    assert eval_when("2 < 10 && !(1 > 2) || false") and not eval_when("true && false")
    assert eval_when("1.0 == 1") and not eval_when("'1' == 1") and eval_when("abc =~ '^a'")
    with pytest.raises(ValueError):
        eval_when("3 ==")
    with pytest.raises(ValueError):
        eval_when("__import__('os') == 1")


def test_workflow_document_is_not_modified(tmp_path):
    doc = load_workflow(FIXTURES / "nested.yaml")
    before = copy.deepcopy(doc)
    run_workflow(doc, tmp_path, console=quiet())
    assert doc == before


@pytest.mark.parametrize("how", ["SIGINT", "terminal closed"])
def test_an_interrupted_runner_stops_its_process_groups(tmp_path, how):
    """Ctrl-C (SIGINT), or the runner's terminal closing (SIGHUP, then every write fails with EIO):
    the node and the grandchild it started, each node in a session of its own, are stopped, and
    run.json records the interruption."""
    import fcntl
    import os
    import signal
    import subprocess
    import sys
    import termios
    import time

    # the node starts a grandchild, as a shell script or a server launcher would
    program = ("import os, subprocess, sys, time; "
               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
               "open(sys.argv[1], 'w').write(f'{os.getpid()} {child.pid}'); time.sleep(60)")
    doc = one_task({"command": ["python", "-c", program], "args": [str(tmp_path / "pids")]})
    (tmp_path / "wf.json").write_text(json.dumps(doc))
    argv = [sys.executable, "-c", "import json, sys; from workflows.runner import run_workflow; "
            "run_workflow(json.load(open(sys.argv[1])), sys.argv[2])", str(tmp_path / "wf.json"), str(tmp_path / "out")]
    master = None
    if how == "SIGINT":
        runner = subprocess.Popen(argv, cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    else:
        master, slave = os.openpty()
        runner = subprocess.Popen(argv, cwd=Path(__file__).parents[1], stdin=slave, stdout=slave, stderr=slave,
                                  start_new_session=True,  # the pty becomes the runner's controlling terminal
                                  preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        os.set_blocking(master, False)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "pids").exists() or len((tmp_path / "pids").read_text().split()) < 2:
            assert time.monotonic() < deadline and runner.poll() is None, "the node did not start"
            if master is not None:
                try:
                    os.read(master, 65536)  # a terminal shows what the runner writes
                except OSError:
                    pass
            time.sleep(0.05)
        pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
        if master is None:
            runner.send_signal(signal.SIGINT)
            assert runner.wait(timeout=20) != 0
            assert b"KeyboardInterrupt" in runner.stderr.read()
        else:
            os.close(master)  # the terminal window closes
            runner.wait(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    deadline = time.monotonic() + 5  # SIGKILL was sent; give a busy machine a moment to deliver it
    while [pid for pid in pids if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if alive(pid)]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["phase"] == "Failed" and run["message"] == "interrupted"


def test_resume_restarts_a_daemon_only_when_a_dependent_must_run(tmp_path):
    port = free_port()
    doc = yaml.safe_load((FIXTURES / "daemon.yaml").read_text().replace("18765", str(port)))
    assert run_workflow(doc, tmp_path, console=quiet()).ok
    pidfile = tmp_path / "volumes" / "shared" / "server.pid"
    pidfile.unlink()

    again = run_workflow(doc, tmp_path, console=quiet())
    assert again.ok and again.nodes["srv"]["reused"] and again.nodes["ask"]["reused"]
    assert not pidfile.exists()  # the server was not started

    (tmp_path / "nodes" / "ask" / "status.json").unlink()  # as if `ask` had failed
    third = run_workflow(doc, tmp_path, console=quiet())
    assert third.ok and not third.nodes["srv"]["reused"] and not third.nodes["ask"]["reused"]
    assert third.nodes["ask"]["outputs"]["parameters"]["reply"] == "pong"
    assert not alive(int(pidfile.read_text()))


def test_volume_sources_without_a_local_equivalent_need_a_folder(tmp_path):
    doc = one_task({"command": ["python", "-c", "import sys; print(open(sys.argv[1]).read())"],
                    "args": ["/etc/app/settings.txt"], "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app"}]})
    doc["spec"]["volumes"] = [{"name": "cfg", "configMap": {"name": "settings"}}]
    assert check_supported(doc) == [
        "spec.volumes[0].configMap: a configMap volume has no local equivalent; map it to a folder "
        "(run_workflow(..., volumes={'cfg': path})) or declare it as an emptyDir or persistentVolumeClaim volume, "
        "which the local runner keeps in the run folder"]
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "settings.txt").write_text("temperature: 0")
    result = run_workflow(doc, tmp_path / "out", volumes={"cfg": cfg}, console=quiet())
    assert result.ok and "temperature: 0" in (tmp_path / "out" / "nodes" / "step" / "log.txt").read_text()


def nested_parallelism(ports: list[int], parallelism: int) -> dict:
    doc = yaml.safe_load((FIXTURES / "nested-parallelism.yaml").read_text().replace("18801", str(ports[0])))
    templates = {t["name"]: t for t in doc["spec"]["templates"]}
    templates["main"]["parallelism"] = parallelism
    if len(set(ports)) > 1:  # servers side by side share 127.0.0.1 here (a cluster gives each pod its own IP)
        templates["server"]["container"]["readinessProbe"]["httpGet"]["port"] = "{{inputs.parameters.port}}"
        for item, port in zip(templates["main"]["dag"]["tasks"][0]["withItems"], ports):
            item["port"] = str(port)
    return doc


def server_spans(log: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """Each item's (up, down) line numbers in the shared event log, and the most servers up at once."""
    events = [line.split()[:2] for line in lines(log)]
    assert sorted(events) == sorted([x, e] for x in "abc" for e in ("up", "down", "c1-start", "c1-end", "c2-start", "c2-end"))
    spans = {x: (events.index([x, "up"]), events.index([x, "down"])) for x in "abc"}
    for i, (x, event) in enumerate(events):  # each client ran while its own server was up
        assert spans[x][0] <= i <= spans[x][1], (x, event, events)
    up = most = 0
    for _, event in events:
        up += {"up": 1, "down": -1}.get(event, 0)
        most = max(most, up)
    return spans, most


def test_dag_parallelism_one_runs_nested_dags_with_their_daemons_one_at_a_time(tmp_path):
    result = run_workflow(nested_parallelism([free_port()], 1), tmp_path, console=quiet())

    assert result.ok, result.message
    for i in range(3):
        assert result.nodes[f"model.{i}.srv"]["phase"] == "Succeeded"
        assert "stopped" in result.nodes[f"model.{i}.srv"]["message"]
    spans, most = server_spans(tmp_path / "volumes" / "shared" / "events.log")
    order = sorted(spans, key=lambda x: spans[x][0])
    # the next server comes up only after the previous nested DAG's clients ended and its server went down
    for before, after in zip(order, order[1:]):
        assert spans[after][0] > spans[before][1]
    assert most == 1


def test_dag_parallelism_two_keeps_at_most_two_nested_daemons_up(tmp_path):
    doc = nested_parallelism(free_ports(3), 2)
    result = run_workflow(doc, tmp_path, parameters={"peers": "2"}, console=quiet())

    assert result.ok, result.message
    _, most = server_spans(tmp_path / "volumes" / "shared" / "events.log")
    assert most == 2  # each client waited for two servers to be up, so two did overlap; never three


def test_daemon_holding_its_dags_only_slot_fails_instead_of_hanging(tmp_path):
    port = free_port()
    doc = yaml.safe_load((FIXTURES / "daemon.yaml").read_text().replace("18765", str(port)))
    doc["spec"]["templates"][-1]["parallelism"] = 1  # as on Argo, the running daemon holds the DAG's slot
    with pytest.raises(WorkflowError, match=r"nodes ask can never start(.|\n)*parallelism of DAG templates"):
        run_workflow(doc, tmp_path, console=quiet())
    assert not alive(int((tmp_path / "volumes" / "shared" / "server.pid").read_text()))


def test_flat_dag_parallelism_counts_running_containers(tmp_path):
    doc = load_workflow(FIXTURES / "sync.yaml")
    doc["spec"]["templates"][-1]["parallelism"] = 1
    result = run_workflow(doc, tmp_path, jobs=4, semaphore_limits={"kubellm-semaphores/gpu": 4}, console=quiet())
    assert result.ok
    assert not overlapping(intervals(tmp_path / "volumes" / "shared", "abcd"))


# -- key-only artifacts (s3: {key: ...}): the workflow's default repository is <out>/s3/ ----------------


def test_keyed_artifacts_hand_folders_between_fanned_out_nested_dags(tmp_path):
    result = run_file(FIXTURES / "keyed-fanout.yaml", tmp_path, console=quiet())

    assert result.ok, result.message
    s3 = tmp_path / "s3" / "exp"
    assert (s3 / "a" / "raw" / "rows.txt").read_text() == "row of a\n"
    # the consumer read the producer's key; `from: {{tasks.produce.outputs.artifacts.raw}}` is that same folder
    assert (s3 / "b" / "upper" / "rows.txt").read_text() == "ROW OF B\nsame\n"
    # collect read the whole prefix and published its summary into it
    assert lines(s3 / "summary.txt") == ["a/raw/rows.txt", "a/upper/rows.txt", "b/raw/rows.txt", "b/upper/rows.txt"]
    status = json.loads((tmp_path / "nodes" / "fan.0.produce" / "status.json").read_text())
    assert status["outputs"]["artifacts"] == {"raw": str(s3 / "a" / "raw")}
    consume = json.loads((tmp_path / "nodes" / "fan.1.consume" / "status.json").read_text())
    assert consume["in_artifacts"] == {"raw": str(s3 / "b" / "raw"), "same": str(s3 / "b" / "raw")}
    assert consume["outputs"]["artifacts"] == {"upper": str(s3 / "b" / "upper")}
    collect = json.loads((tmp_path / "nodes" / "collect" / "status.json").read_text())
    assert collect["in_artifacts"] == {"root": str(s3)} and collect["outputs"]["artifacts"] == {"results": str(s3)}
    assert not any((tmp_path / "nodes" / "fan.0.produce" / "artifacts").iterdir())


def test_keyed_artifacts_resume_reruns_only_the_producer_of_a_missing_key_and_its_dependents(tmp_path):
    ran = tmp_path / "volumes" / "shared" / "ran.log"
    assert run_file(FIXTURES / "keyed-fanout.yaml", tmp_path, console=quiet()).ok
    assert len(lines(ran)) == 5

    again = run_file(FIXTURES / "keyed-fanout.yaml", tmp_path, console=quiet())
    assert again.ok and all(again.nodes[n]["reused"] for n in ("fan.0.produce", "fan.1.consume", "collect"))
    assert len(lines(ran)) == 5  # nothing ran

    s3 = tmp_path / "s3" / "exp"
    shutil.rmtree(s3 / "a" / "raw")
    (s3 / "a" / "upper" / "partial.jsonl").write_text("{}\n")  # row-level progress of a step that re-runs
    third = run_file(FIXTURES / "keyed-fanout.yaml", tmp_path, console=quiet())
    assert third.ok, third.message
    assert lines(ran)[5:] == ["produce-a", "consume-a", "collect"]
    reused = {n for n, s in third.nodes.items() if s.get("reused")}
    assert reused == {"fan.1.produce", "fan.1.consume"}
    assert (s3 / "a" / "raw" / "rows.txt").read_text() == "row of a\n"
    assert (s3 / "a" / "upper" / "partial.jsonl").exists()  # a node that runs again keeps its folder
    assert "a/upper/partial.jsonl" in lines(s3 / "summary.txt")


def test_keyed_artifacts_refuse_other_repositories_and_keys_outside_the_repository(tmp_path):
    doc = load_workflow(FIXTURES / "keyed-fanout.yaml")
    doc["spec"]["templates"][0]["outputs"]["artifacts"][0]["s3"]["bucket"] = "elsewhere"
    doc["spec"]["templates"][1]["inputs"]["artifacts"][0]["s3"]["endpoint"] = "minio:9000"
    problems = check_supported(doc)
    assert len(problems) == 2
    assert problems[0].startswith("spec.templates[0].outputs.artifacts[0].s3.bucket: not supported by the local "
                                  "runner (supported: key)")
    assert problems[1].startswith("spec.templates[1].inputs.artifacts[0].s3.endpoint: not supported")

    for bad in ("../escape", "/abs"):
        out = tmp_path / bad.strip("./")
        result = run_file(FIXTURES / "keyed-fanout.yaml", out, parameters={"experiment": bad}, console=quiet())
        assert result.phase == "Failed"
        node = result.nodes["fan.0.produce"]
        assert node["phase"] == "Error"
        assert "spec.templates[0].outputs.artifacts[0].s3.key: key" in node["message"]
        assert "must be relative and must not contain '..'" in node["message"]
        assert not (out / "escape").exists() and not (out / "s3").exists()


def test_keyed_input_that_nobody_wrote_is_an_error_unless_optional(tmp_path):
    doc = load_workflow(FIXTURES / "keyed-fanout.yaml")
    doc["spec"]["templates"][3]["inputs"]["artifacts"][0]["s3"]["key"] = "{{workflow.parameters.experiment}}/none"
    result = run_workflow(doc, tmp_path / "strict", console=quiet())
    assert result.phase == "Failed" and result.nodes["collect"]["phase"] == "Error"
    message = result.nodes["collect"]["message"]
    assert "reads key 'exp/none'" in message and str(tmp_path / "strict" / "s3" / "exp" / "none") in message

    doc["spec"]["templates"][3]["inputs"]["artifacts"][0]["optional"] = True
    result = run_workflow(doc, tmp_path / "optional", console=quiet())
    assert result.ok, result.message
    assert (tmp_path / "optional" / "s3" / "exp" / "summary.txt").read_text() == ""


def test_a_workflow_argo_refuses_does_not_start(tmp_path):
    doc = one_task({"command": ["python", "-c", "print('ran')"], "resources": {"limits": {"cpu": "{{inputs.parameters.cpu}}"}}},
                   inputs={"parameters": [{"name": "cpu", "value": "2"}]})
    assert check_supported(doc) == []  # the runner itself ignores resources: only Argo's rules refuse it
    with pytest.raises(WorkflowError, match=r"Argo would refuse this workflow(.|\n)*spec\.templates\[0\]\.container\.resources"):
        run_workflow(doc, tmp_path, console=quiet())
    assert not (tmp_path / "nodes").exists()
