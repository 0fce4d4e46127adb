"""CronWorkflow checks as Argo makes them (workflow/validate ValidateCronWorkflow): each schedule
parses with the standard five-field cron parser (robfig/cron: minute hour day-of-month month
day-of-week, `*`, lists, ranges, steps, month and weekday names, `?`, the @-descriptors and
`@every <duration>`, an optional CRON_TZ=/TZ= prefix), the concurrency policy is one of Allow,
Forbid, Replace, and the workflowSpec is a valid Workflow spec (lint_workflow checks it)."""

from __future__ import annotations

import re

FIELDS = (("minute", 0, 59, None), ("hour", 0, 23, None), ("day of month", 1, 31, None),
          ("month", 1, 12, ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]),
          ("day of week", 0, 6, ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]))
DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
POLICIES = ("Allow", "Forbid", "Replace")


def _value(text: str, lo: int, names: list[str] | None) -> int:
    if names and text.upper() in names:
        return names.index(text.upper()) + lo
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a number")
    return int(text)


def check_schedule(schedule: str) -> None:
    """Raise ValueError naming the field that does not parse."""
    s = re.sub(r"^(?:CRON_TZ|TZ)=\S+\s+", "", schedule.strip())
    if s in DESCRIPTORS:
        return
    if s.startswith("@every "):
        if not re.fullmatch(r"@every (\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+", s):
            raise ValueError(f"schedule {schedule!r}: @every needs a Go duration, e.g. @every 6h")
        return
    parts = s.split()
    if len(parts) != 5:
        raise ValueError(f"schedule {schedule!r} has {len(parts)} fields; a cron schedule has 5 (minute hour "
                         "day-of-month month day-of-week), e.g. '0 */6 * * *'")
    for part, (name, lo, hi, names) in zip(parts, FIELDS):
        for item in part.split(","):
            try:
                rng, _, step = item.partition("/")
                if step and (not step.isdigit() or int(step) == 0):
                    raise ValueError(f"step {step!r} must be a positive number")
                if rng in ("*", "?"):
                    if rng == "?" and name not in ("day of month", "day of week"):
                        raise ValueError("'?' is only for day of month and day of week")
                    continue
                a, _, b = rng.partition("-")
                first = _value(a, lo, names)
                last = _value(b, lo, names) if b else first
                if not (lo <= first <= hi and lo <= last <= hi) or first > last:
                    raise ValueError(f"{rng!r} is outside {lo}-{hi}")
            except ValueError as e:
                raise ValueError(f"schedule {schedule!r}: {name} field {part!r}: {e}") from None


def cron_problems(doc: dict) -> list[str]:
    """Problems of a CronWorkflow's own fields (its workflowSpec is checked as a Workflow)."""
    spec = doc.get("spec") or {}
    out = []
    schedules = list(spec.get("schedules") or []) + ([spec["schedule"]] if spec.get("schedule") else [])
    if not schedules:
        out.append("spec.schedules: a CronWorkflow needs at least one schedule")
    for i, s in enumerate(schedules):
        try:
            check_schedule(str(s))
        except ValueError as e:
            out.append(f"spec.schedules[{i}]: {e}")
    policy = spec.get("concurrencyPolicy")
    if policy is not None and policy not in POLICIES:
        out.append(f"spec.concurrencyPolicy: {policy!r} is not one of {', '.join(POLICIES)}")
    if not isinstance(spec.get("workflowSpec"), dict):
        out.append("spec.workflowSpec: missing")
    return out
