"""The configure form of a pipeline, generated from its `PARAMS`, and its checks: each field alone
against the step field it feeds (workflows.common.check_params), then the whole set as `kubellm run`
checks it (workflows.cli.check_local_run) or, for a cluster, as the workflow's check-params node does
(`validate_params(files=False)`). An error goes beside the parameter its message names first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORM_ERROR = ""  # errors that name no parameter go at the top of the form


@dataclass
class Field:
    name: str
    default: str
    help: str
    choices: tuple[str, ...] | None
    compile_time: bool
    value: str
    error: str = ""


def pipeline_params(pipeline: str) -> dict:
    from workflows.cli import pipeline_module

    return pipeline_module(pipeline).PARAMS


def fields(pipeline: str, values: dict[str, str] | None = None, errors: dict[str, str] | None = None) -> list[Field]:
    values, errors = values or {}, errors or {}
    return [Field(k, p.default, p.help, p.choices(), p.compile_time, values.get(k, p.default), errors.get(k, ""))
            for k, p in pipeline_params(pipeline).items()]


def given(pipeline: str, form: dict[str, str]) -> dict[str, str]:
    """The parameters a form sets: those that differ from the defaults (what one would type as -p)."""
    return {k: form[k].strip() for k, p in pipeline_params(pipeline).items()
            if k in form and form[k].strip() != p.default}


def field_of(message: str, names: list[str]) -> str:
    """The parameter a message names first (`parameter steps=...`, `heldout-paraphrase cannot exceed
    num-questions` -> heldout-paraphrase); FORM_ERROR when it names none."""
    best = (len(message) + 1, 0, FORM_ERROR)
    for n in names:
        m = re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", message)
        if m:
            best = min(best, (m.start(), -len(n), n))
    return best[2]


def check(pipeline: str, params: dict[str, str], local: bool = True) -> dict[str, str]:
    """Parameter name (or FORM_ERROR) -> error message; empty when the parameters may start a run."""
    from workflows.cli import check_local_run, pipeline_module
    from workflows.common import check_params

    spec = pipeline_params(pipeline)
    errors: dict[str, str] = {}
    for k in sorted(set(params) - set(spec)):
        errors[FORM_ERROR] = f"unknown parameter {k!r}; {pipeline} takes: {', '.join(spec)}"
    for k, v in params.items():
        if k in spec:
            try:
                check_params(pipeline, {k: spec[k]}, {k: v})
            except ValueError as e:
                errors[k] = str(e)
    if errors:
        return errors
    try:
        if local:
            check_local_run(pipeline, params)
        else:
            pipeline_module(pipeline).validate_params(params, files=False)
    except (ValueError, OSError) as e:
        errors[field_of(str(e), list(spec))] = str(e)
    return errors


def options(form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The `kubellm run` options a form sets (store, jobs, serve_port) and the errors of those it
    refuses, keyed by option name. Empty means the default, as when the flag is left out."""
    opts: dict[str, str] = {}
    errors: dict[str, str] = {}
    store = (form.get("store") or "s3").strip()
    if store not in ("s3", "pvc"):
        errors["store"] = f"store {store!r}: choose s3 or pvc"
    opts["store"] = store
    for name, low, high, what in (("jobs", 1, 64, "nodes running at once"),
                                  ("serve_port", 1024, 65535, "a local TCP port for the model server")):
        v = (form.get(name) or "").strip()
        if not v:
            continue
        if not v.isdigit() or not low <= int(v) <= high:
            errors[name] = f"{name.replace('_', '-')}={v!r}: give a whole number from {low} to {high} ({what}), or leave it empty"
        else:
            opts[name] = str(int(v))
    return opts, errors
