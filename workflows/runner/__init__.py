"""Run a rendered Argo Workflow on this machine: processes in place of pods, a folder in place of S3/PVCs.

    from workflows.runner import run_file
    result = run_file("distill.yaml", out=Path("runs/distill"))

docs/runner.md describes the run folder, the path rule, resume and the deliberate local differences.
A module per concern: supported (what runs here), run (the orchestrator), binding, container,
processes, graph, state, display, expressions; workflows.refs reads the workflow's references.
"""

from workflows.refs import TEMPLATE_TAG, ancestors, dag_dependencies, depends_tasks, iter_strings, parse_expression
from workflows.runner.container import DAEMON_READY_CAP_S
from workflows.runner.errors import WorkflowError
from workflows.runner.expressions import eval_when
from workflows.runner.processes import DAEMON_STOP_GRACE_S, KILL_GRACE_S, POLL_S
from workflows.runner.run import load_workflow, run_file, run_workflow
from workflows.runner.state import FAILED, TERMINAL, RunResult
from workflows.runner.supported import CLUSTER_ONLY, PLACEMENT_PATCH_KEYS, check_supported

__all__ = [
    "CLUSTER_ONLY", "DAEMON_READY_CAP_S", "DAEMON_STOP_GRACE_S", "FAILED", "KILL_GRACE_S", "PLACEMENT_PATCH_KEYS",
    "POLL_S", "TEMPLATE_TAG", "TERMINAL", "RunResult", "WorkflowError", "ancestors", "check_supported",
    "dag_dependencies", "depends_tasks", "eval_when", "iter_strings", "load_workflow", "parse_expression",
    "run_file", "run_workflow",
]
