"""Rules the Argo controller enforces while it runs a Workflow, checked before it is submitted.

`argo lint` passes these workflows; the controller then fails a node, or silently skips a metric,
when it meets them: custom Prometheus metrics (workflow/metrics and computeMetrics),
synchronization locks (workflow/sync), memoization (workflow/controller/cache), retry back-off,
suspend durations, and lifecycle hooks' templates. Each rule names the Go function it follows
(Argo v3.7).
"""

from __future__ import annotations

import re
from typing import Iterator

from workflows.argo.parse import argo_duration_error, go_duration_error, go_float_error
from workflows.argo.variables import tags

_METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_CACHE_KEY = re.compile(r"[a-zA-Z0-9][-a-zA-Z0-9]*")  # workflow/controller/cache/cache.go cacheKeyRegex
_RETRY_POLICIES = ("Always", "OnError", "OnFailure", "OnTransientError", "")


def _substitute(text: str, wf_values: dict[str, str]) -> str | None:
    """text with {{workflow.parameters.X}} replaced by its value; None if any other tag is left."""
    out = text
    for tag in set(tags(text)):
        name = tag.strip()
        if not name.startswith("workflow.parameters.") or name[20:] not in wf_values:
            return None
        out = out.replace("{{" + tag + "}}", wf_values[name[20:]])
    return out


def _metrics(spec: dict, sp: str, templates: list[tuple[str, dict]]) -> Iterator[tuple[str, dict, str | None]]:
    """(path, metric, owning template's name or None at workflow level) of every custom metric.

    Templates come first: the workflow's own metrics are emitted when it completes, after theirs.
    """
    for tp, t in templates:
        for j, m in enumerate((t.get("metrics") or {}).get("prometheus") or []):
            if isinstance(m, dict):
                yield f"{tp}.metrics.prometheus[{j}]", m, str(t.get("name"))
    for j, m in enumerate((spec.get("metrics") or {}).get("prometheus") or []):
        if isinstance(m, dict):
            yield f"{sp}.metrics.prometheus[{j}]", m, None


def metric_problems(spec: dict, sp: str, templates: list[tuple[str, dict]], wf_values: dict[str, str]) -> list[str]:
    problems: list[str] = []
    first: dict[str, tuple[str, str, str]] = {}  # metric name -> (path, help, type) of its first definition
    for path, m, owner in _metrics(spec, sp, templates):
        level = f"template '{owner}'" if owner is not None else "the workflow"
        raw_name = str(m.get("name") or "")
        # A template's metric names and label keys are checked after the validator substitutes its
        # variables (validate.go validateTemplate on common.ProcessArgs' result): only workflow
        # parameters with a value become text; any other variable becomes a placeholder such as
        # 'placeholder-3', which no metric name accepts. Workflow-level metrics are substituted at
        # run time (workflow/controller/operator.go computeMetrics).
        name = _substitute(raw_name, wf_values)
        if name is None and owner is not None:
            problems.append(f"{path}.name: '{raw_name}' depends on a variable Argo's validator cannot resolve to a "
                            "metric name (metrics.IsValidMetricName rejects its placeholder): use a fixed name and "
                            "put the variable in a label value")
        elif name is not None and not _METRIC_NAME.fullmatch(name):
            # validate.go validateTemplate and workflow/metrics/metrics_custom.go UpsertCustomMetric:
            # workflow/metrics/util.go IsValidMetricName (Prometheus legacy names without ':')
            problems.append(f"{path}.name: '{name}' is not a valid metric name: names may only contain alphanumeric "
                            f"characters or '_' and must not start with a digit (e.g. "
                            f"'{re.sub(r'[^a-zA-Z0-9_]', '_', name).lstrip('0123456789') or 'metric'}')")
        for k, label in enumerate(m.get("labels") or []):
            key = str((label or {}).get("key") or "")
            resolved = _substitute(key, wf_values)
            if resolved is not None and not _METRIC_NAME.fullmatch(resolved) or resolved is None and owner is not None:
                # workflow/metrics/util.go ValidateMetricLabels, from validate.go validateTemplate
                problems.append(f"{path}.labels[{k}].key: '{key}' is not a valid metric label key: keys may only "
                                "contain alphanumeric characters or '_' and must not start with a digit")
        if not m.get("help"):
            # validate.go validateTemplate (template metrics), operator.go computeMetrics (workflow metrics)
            problems.append(f"{path}.help: missing: Argo refuses a custom metric without a help string")
        problems += _metric_value_problems(path, m, owner is not None)
        kind = next((k for k in ("gauge", "histogram", "counter") if m.get(k) is not None), None)
        if kind is None:
            # workflow/metrics/metrics_custom.go createCustomMetric: "invalid metric spec"
            problems.append(f"{path}: {level}'s metric '{raw_name}' has no gauge, counter or histogram: say which")
        if name is None or kind is None:
            continue
        help_text = str(m.get("help") or "")
        if name not in first:
            first[name] = (path, help_text, kind)
            continue
        where, help0, kind0 = first[name]
        # workflow/metrics/metrics_custom.go matchExistingMetric: the controller keeps one instrument
        # per metric name, for every workflow it runs, and refuses a later definition with another
        # help or type
        if help_text != help0:
            problems.append(f"{path}.help: metric '{name}' already has the help '{help0}' ({where}.help); the Argo "
                            f"controller keeps the first help of a metric name and refuses this one (\"Help for metric "
                            f"{name} is already set to {help0}, it cannot be changed\"), so it is never emitted: use one "
                            "help text per metric name, or another name")
        if kind != kind0:
            problems.append(f"{path}: metric '{name}' is a {kind} here but a {kind0} at {where}: the Argo controller "
                            f"refuses a second type for one metric name (\"Found existing {kind0} for custom metric "
                            f"{name}\"): use another name")
    return problems


def _metric_value_problems(path: str, m: dict, in_template: bool) -> list[str]:
    problems = []
    for kind in ("gauge", "counter", "histogram"):
        body = m.get(kind)
        if isinstance(body, dict) and not str(body.get("value") or ""):
            # workflow/metrics/util.go ValidateMetricValues
            problems.append(f"{path}.{kind}.value: missing: a {kind} metric needs the value it records")
    gauge = m.get("gauge") if isinstance(m.get("gauge"), dict) else {}
    kind = next((k for k in ("gauge", "histogram", "counter") if isinstance(m.get(k), dict)), None)
    value = str((m.get(kind) or {}).get("value") or "") if kind else ""
    if kind == "gauge" and gauge.get("realtime") is True:
        if "resourcesDuration." in value:
            # workflow/metrics/util.go ValidateMetricValues
            problems.append(f"{path}.gauge.value: 'resourcesDuration.*' metrics cannot be used in real time: set "
                            "realtime: false")
        # workflow/controller/operator.go computeMetrics: a real-time value must be one variable of
        # the real-time scope, which steps.go prepareDefaultMetricScope / prepareMetricScope fill
        # with workflow.duration (and, for a template's node, duration)
        allowed = ("duration", "workflow.duration") if in_template else ("workflow.duration",)
        whole = re.fullmatch(r"\{\{(.*)\}\}", value)
        if value and (whole is None or whole.group(1).strip() not in allowed):
            problems.append(f"{path}.gauge.value: '{value}' cannot be a real-time value (real time metrics can only "
                            f"be used with metric variables: {' or '.join('{{' + a + '}}' for a in allowed)}); set "
                            "realtime: false to record it once")
    elif value and "{{" not in value and (error := go_float_error(value)) is not None:
        # workflow/metrics/metrics_custom.go UpsertCustomMetric parses the value with strconv.ParseFloat
        problems.append(f"{path}.{kind}.value: {error}: the controller records a {kind} value as a number")
    return problems


def sync_problems(owner: dict, path: str) -> list[str]:
    """A synchronization block the controller's lock manager refuses (workflow/sync/sync_manager.go TryAcquire).

    Ported from workflow/sync allSyncItems / checkDuplicates, getSemaphoreLockName and
    lockName.validate: a semaphore is a ConfigMap key or a database key, not both; a ConfigMap
    lock needs a name and a key; a mutex needs a name; no lock may be listed twice.
    """
    sync = owner.get("synchronization")
    if not isinstance(sync, dict):
        return []
    base = f"{path}.synchronization"
    problems = []
    items: list[tuple[str, str, dict]] = []
    if isinstance(sync.get("semaphore"), dict):
        items.append((f"{base}.semaphore", "semaphore", sync["semaphore"]))
    if isinstance(sync.get("mutex"), dict):
        items.append((f"{base}.mutex", "mutex", sync["mutex"]))
    items += [(f"{base}.semaphores[{i}]", "semaphore", s) for i, s in enumerate(sync.get("semaphores") or [])
              if isinstance(s, dict)]
    items += [(f"{base}.mutexes[{i}]", "mutex", s) for i, s in enumerate(sync.get("mutexes") or []) if isinstance(s, dict)]
    for k, (p, kind, item) in enumerate(items):
        if kind == "semaphore":
            ref, db = item.get("configMapKeyRef"), item.get("database")
            if ref is not None and db is not None:
                problems.append(f"{p}: a semaphore is either configMapKeyRef or database, not both")
            elif ref is None and db is None:
                problems.append(f"{p}: a semaphore needs configMapKeyRef (name and key of the ConfigMap holding its "
                                "limit) or database")
            elif ref is not None:
                for field in ("name", "key"):
                    if not (ref or {}).get(field):
                        problems.append(f"{p}.configMapKeyRef.{field}: missing: the lock cannot be named without it")
            elif not (db or {}).get("key"):
                problems.append(f"{p}.database.key: missing: the lock cannot be named without it")
        elif not item.get("name"):
            problems.append(f"{p}.name: missing: a mutex is known by its name")
        if any(kind == kind2 and item == item2 for _, kind2, item2 in items[:k]):
            problems.append(f"{p}: the same {kind} is listed twice (duplicate synchronization item found): list it once")
    return problems


def memoize_problems(t: dict, tp: str, wf_values: dict[str, str]) -> list[str]:
    """A memoize block whose key, maxAge or cache the controller refuses (operator.go executeTemplate)."""
    memo = t.get("memoize")
    if not isinstance(memo, dict):
        return []
    problems = []
    key = str(memo.get("key") or "")
    # workflow/controller/cache/configmap_cache.go Load / Save: the substituted key must match cacheKeyRegex. Variables are
    # replaced by 'a' first: whatever they hold, the rest of the key must fit.
    loose = _substitute(key, wf_values) or re.sub(r"\{\{.*?\}\}", "a", key, flags=re.S)
    if not _CACHE_KEY.fullmatch(loose):
        problems.append(f"{tp}.memoize.key: '{key}' is not a valid cache key (must match ^[a-zA-Z0-9][-a-zA-Z0-9]*$ "
                        "once substituted, since it is a ConfigMap data key): join the parts with '-' "
                        "(e.g. '{{inputs.parameters.model}}-{{inputs.parameters.seed}}')")
    max_age = str(memo.get("maxAge") or "")
    if max_age and "{{" not in max_age and (error := go_duration_error(max_age)) is not None:
        # workflow/controller/operator.go executeTemplate: time.ParseDuration(memoize.maxAge)
        problems.append(f"{tp}.memoize.maxAge: {error}: write a Go duration such as 24h or 90m")
    name = ((memo.get("cache") or {}).get("configMap") or {}).get("name")
    if not name:
        # workflow/controller/operator.go executeTemplate: cacheFactory.GetCache(..., configMap.name)
        problems.append(f"{tp}.memoize.cache.configMap.name: missing: name the ConfigMap that holds the cache")
    return problems


def retry_problems(t: dict, tp: str) -> list[str]:
    """retryStrategy and suspend values the validator or the controller refuses."""
    problems = []
    rs = t.get("retryStrategy")
    if isinstance(rs, dict):
        policy = rs.get("retryPolicy") or ""
        if policy not in _RETRY_POLICIES:
            # workflow/validate/validate.go validateTemplateHolder
            problems.append(f"{tp}.retryStrategy.retryPolicy: '{policy}' is not a valid RetryPolicy (use Always, "
                            "OnError, OnFailure or OnTransientError)")
        limit = rs.get("limit")
        if isinstance(limit, str) and "{{" not in limit and not re.fullmatch(r"[+-]?[0-9]+", limit):
            # workflow/controller/operator.go processNodeRetries: intstr.Int32(retryStrategy.limit)
            problems.append(f"{tp}.retryStrategy.limit: '{limit}' cannot be resolved to an int")
        backoff = rs.get("backoff")
        if isinstance(backoff, dict):
            if not backoff.get("duration"):
                # operator.go processNodeRetries: "no base duration specified for retryStrategy"
                problems.append(f"{tp}.retryStrategy.backoff.duration: missing: a backoff needs a base duration "
                                "(e.g. 10s), else the first retry fails the node")
            for field in ("duration", "maxDuration", "cap"):
                value = backoff.get(field)
                if isinstance(value, str) and value and "{{" not in value and (e := argo_duration_error(value)):
                    # operator.go processNodeRetries: wfv1.ParseStringToDuration (seconds or a Go duration)
                    problems.append(f"{tp}.retryStrategy.backoff.{field}: {e}: write seconds (30) or a Go "
                                    "duration (30s, 5m, 1h)")
            factor = backoff.get("factor")
            if isinstance(factor, str) and "{{" not in factor and not re.fullmatch(r"[+-]?[0-9]+", factor):
                # operator.go processNodeRetries: intstr.Int32(backoff.factor)
                problems.append(f"{tp}.retryStrategy.backoff.factor: '{factor}' cannot be resolved to an int")
    duration = (t.get("suspend") or {}).get("duration") if isinstance(t.get("suspend"), dict) else None
    if isinstance(duration, str) and duration and "{{" not in duration and (e := argo_duration_error(duration)):
        # workflow/controller/operator.go executeSuspend: wfv1.ParseStringToDuration(suspend.duration)
        problems.append(f"{tp}.suspend.duration: {e}: write seconds (30) or a Go duration (30s, 5m, 1h)")
    return problems


def hook_template_problems(owner: dict, path: str, names: list, call: bool = False) -> list[str]:
    """Hooks and exit handlers naming a template that does not exist.

    The validator does not look at them (validateHooks only asks for an expression); the
    controller fails when it starts the hook (workflow/controller/hooks.go executeTmplLifeCycleHook,
    exit_handler.go runOnExitNode, through templateresolution.Context.GetTemplateByName).
    call: owner is a DAG task or a step, whose deprecated `onExit` names a template too.
    """
    problems = []
    hooks = owner.get("hooks") if isinstance(owner.get("hooks"), dict) else {}
    refs = [(f"{path}.hooks.{k}.template", (h or {}).get("template")) for k, h in hooks.items()]
    if call and owner.get("onExit"):
        refs.append((f"{path}.onExit", owner.get("onExit")))
    for p, name in refs:
        if name and "{{" not in str(name) and name not in names:
            problems.append(f"{p}: unknown template '{name}' (templates are {', '.join(map(str, names))})")
    return problems
