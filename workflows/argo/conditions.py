"""The condition language of Argo resource templates (`successCondition`, `failureCondition`).

Argo (workflow/executor/resource.go, WaitResource and matchConditions) parses a condition with the
Kubernetes label-selector parser (k8s.io/apimachinery labels.Parse) and answers each requirement's
key as a gjson path into the object's JSON: `status.succeeded > 0`, `status.phase in (Failed, Error)`,
`!status.unavailableReplicas`. A failure requirement that holds fails the node; the node succeeds
once every success requirement holds. `kubellm lint` parses conditions with `parse` (a condition
that does not parse fails the node on a cluster only when it runs), and the local runner evaluates
them with `matches` against the objects it emulates.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# labels.validateLabelKey (a qualified name) and validateLabelValue
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_KEY = re.compile(rf"(([a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_NAME}")
_VALUE = re.compile(rf"({_NAME})?")
# the selector lexer: operators, parentheses, commas, and identifiers (runs of anything else but blanks)
_TOKEN = re.compile(r"\s*(==|!=|=|!|>|<|\(|\)|,|[^\s=!<>(),]+)")
SET_OPS = ("in", "notin")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "exists", "!", "=", "==", "!=", "in", "notin", ">", "<"
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return "!" + self.key
        if self.op in SET_OPS:
            return f"{self.key} {self.op} ({','.join(self.values)})"
        return f"{self.key}{self.op}{self.values[0]}"


def parse(text: str) -> list[Requirement]:
    """Requirements of a condition, or ValueError naming what Argo's parser would reject."""
    tokens = _TOKEN.findall(text)
    if "".join(tokens) != re.sub(r"\s+", "", text):
        raise ValueError(f"cannot read {text!r} as a label selector")
    reqs: list[Requirement] = []
    i = 0

    def take() -> str | None:
        nonlocal i
        i += 1
        return tokens[i - 1] if i <= len(tokens) else None

    def key_of(tok: str | None) -> str:
        if tok is None or tok in "==!=<>(),":
            raise ValueError(f"expected a key, found {tok or 'the end'!r}")
        if len(tok.split("/")[-1]) > 63 or not _KEY.fullmatch(tok):
            raise ValueError(f"{tok!r} is not a valid key: a qualified name (alphanumerics, '-', '_', '.', "
                             "at most 63 characters, an optional DNS prefix and '/')")
        return tok

    def value_of(tok: str | None) -> str:
        if tok is None or tok in ("(", ")", ","):
            raise ValueError(f"expected a value, found {tok or 'the end'!r}")
        if len(tok) > 63 or not _VALUE.fullmatch(tok):
            raise ValueError(f"{tok!r} is not a valid value: at most 63 alphanumerics, '-', '_' or '.'")
        return tok

    while i < len(tokens):
        tok = take()
        if tok == "!":
            reqs.append(Requirement(key_of(take()), "!"))
        else:
            key = key_of(tok)
            nxt = tokens[i] if i < len(tokens) else None
            if nxt is None or nxt == ",":
                reqs.append(Requirement(key, "exists"))
            elif nxt in ("=", "==", "!=", ">", "<"):
                take()
                # an equality may compare with the empty value: `key=` then a comma or the end
                val = "" if nxt in ("=", "==", "!=") and (i >= len(tokens) or tokens[i] == ",") else value_of(take())
                if nxt in (">", "<") and not re.fullmatch(r"[+-]?\d+", val):
                    raise ValueError(f"{key} {nxt} {val}: the value of {nxt} must be an integer")
                reqs.append(Requirement(key, nxt, (val,)))
            elif nxt in SET_OPS:
                take()
                if take() != "(":
                    raise ValueError(f"{key} {nxt}: expected '(' and a list of values")
                vals = []
                while True:
                    tok = take()
                    if tok == ")" and not vals:
                        break
                    vals.append(value_of(tok))
                    sep = take()
                    if sep == ")":
                        break
                    if sep != ",":
                        raise ValueError(f"{key} {nxt}: expected ',' or ')', found {sep or 'the end'!r}")
                reqs.append(Requirement(key, nxt, tuple(vals)))
            else:
                raise ValueError(f"after {key!r}: expected an operator (=, ==, !=, in, notin, >, <) or ',', "
                                 f"found {nxt!r}")
        if i < len(tokens):
            if take() != ",":
                raise ValueError(f"expected ',' between requirements, found {tokens[i - 1]!r}")
            if i >= len(tokens):
                raise ValueError("a trailing ',' with no requirement after it")
    return reqs


def lookup(obj: Any, path: str) -> tuple[bool, str]:
    """(exists, text) of a gjson path in `obj`, as gjson's Exists() and String() answer it: '.' separates
    keys (a backslash escapes one), a number indexes an array, and a number or bool reads as its JSON text."""
    parts = [p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", path)]
    cur = obj
    for p in parts:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            return False, ""
    if isinstance(cur, str):
        return True, cur
    if cur is None:
        return True, ""
    return True, json.dumps(cur, separators=(",", ":"))


def holds(req: Requirement, obj: Any) -> bool:
    """labels.Requirement.Matches over the object's JSON."""
    has, value = lookup(obj, req.key)
    if req.op == "exists":
        return has
    if req.op == "!":
        return not has
    if req.op in ("=", "==", "in"):
        return has and value in req.values
    if req.op in ("!=", "notin"):
        return not has or value not in req.values
    if not has or not re.fullmatch(r"[+-]?\d+", value):
        return False
    return int(value) > int(req.values[0]) if req.op == ">" else int(value) < int(req.values[0])


def check(obj: Any, success: list[Requirement], failure: list[Requirement]) -> str | None:
    """matchConditions: "failed: <requirement>", "succeeded", or None while neither holds."""
    for req in failure:
        if holds(req, obj):
            return f"failed: failure condition '{req}' holds"
    if all(holds(req, obj) for req in success):
        return "succeeded"
    return None
