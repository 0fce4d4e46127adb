"""Values as Argo renders them: parameter strings, durations, `when`/`depends` evaluation, {{...}} and $(VAR)."""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from workflows.refs import TEMPLATE_TAG, parse_expression
from workflows.runner.errors import TaskError, Unresolved, WorkflowError


def as_str(value: Any) -> str:
    """A parameter value as Argo renders it: strings as-is, everything else as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, separators=(",", ":"))


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def seconds(value: Any, where: str) -> float:
    """Seconds from an Argo duration: 30, "30", "30s", "1m30s", "200ms"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise WorkflowError(f"{where}: {value!r} is not a duration (examples: 30, \"30s\", \"1m30s\", \"200ms\")")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def evaluate(tree: tuple, word: Callable[[str], Any]) -> Any:
    """Evaluate a parsed expression; `word` gives the value of a bare word."""
    kind = tree[0]
    if kind == "str":
        return tree[1]
    if kind == "word":
        return word(tree[1])
    if kind == "not":
        return not _need_bool(evaluate(tree[1], word), "!")
    if kind in ("and", "or"):
        left = _need_bool(evaluate(tree[1], word), "&&" if kind == "and" else "||")
        if left == (kind == "or"):
            return left
        return _need_bool(evaluate(tree[2], word), "&&" if kind == "and" else "||")
    op, a, b = tree[1], evaluate(tree[2], word), evaluate(tree[3], word)
    if op in ("==", "!="):
        equal = type(a) is type(b) and a == b
        return equal if op == "==" else not equal
    if op in ("=~", "!~"):
        if not (isinstance(a, str) and isinstance(b, str)):
            raise ValueError(f"{op} needs strings, got {a!r} and {b!r}")
        found = re.search(b, a) is not None
        return found if op == "=~" else not found
    if type(a) is not type(b) or not isinstance(a, (float, str)):
        raise ValueError(f"cannot compare {a!r} {op} {b!r}")
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]


def _need_bool(value: Any, op: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{op} needs true/false, got {value!r}")
    return value


def eval_when(text: str) -> bool:
    """Evaluate a substituted `when`. Bare words are strings, as in Argo (`{{x}} == heads`)."""

    def word(w: str) -> Any:
        if w in ("true", "false"):
            return w == "true"
        if _NUMBER.fullmatch(w):
            return float(w)
        return w

    result = evaluate(parse_expression(text), word)
    return _need_bool(result, "when")


def subst(value: Any, lookup: Callable[[str], str], where: str) -> Any:
    """Replace every {{variable}} in the strings of `value` (single pass: values are not re-expanded)."""
    if isinstance(value, str):

        def one(m: re.Match) -> str:
            name = m.group(1).strip()
            try:
                return lookup(name)
            except Unresolved as e:
                raise TaskError(f"{where}: cannot resolve '{{{{{name}}}}}': {e}") from None

        return TEMPLATE_TAG.sub(one, value)
    if isinstance(value, list):
        return [subst(v, lookup, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: subst(v, lookup, f"{where}.{k}") for k, v in value.items()}
    return value


def k8s_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion from the container's own env; unknown references stay, $$ escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)
