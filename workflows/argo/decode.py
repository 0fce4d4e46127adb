"""Rules Argo applies while it decodes a Workflow into Go types, before any `{{...}}` is substituted.

Argo reads a file with sigs.k8s.io/yaml (workflow/common/parse.go ParseObjects, toWorkflowTypeYAML,
toWorkflowTypeJSON): YAML becomes JSON, JSON becomes wfv1.Workflow. So a resource quantity must
already be a Kubernetes quantity (a `{{...}}` string is not one), and a parameter value written
as a YAML number or boolean becomes Go's text for it (`2e-4` becomes `0.0002`).
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Any, Iterator

import yaml

from workflows.argo.parse import argo_string, json_quantity_error, yaml_scalar

# Free-form subtrees Argo does not decode into Kubernetes types (loop items, plugin configs).
_OPAQUE = frozenset({"withItems", "plugin"})
# A parameter's values typed wfv1.AnyString: value, default, enum entries and valueFrom.default.
_PARAM_VALUE = re.compile(r"(^|\.)parameters\[\d+\]\.(value|default|enum\[\d+\]|valueFrom\.default)$")


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, value) of every node below value, in lint's path style, skipping opaque subtrees."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in _OPAQUE:
                yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")


def _quantity_fields(spec: dict, sp: str) -> Iterator[tuple[str, Any]]:
    """Every field of the spec typed resource.Quantity in Argo's Go types.

    Container resources (container, script, initContainers, sidecars, containerSet containers,
    templateDefaults), PersistentVolumeClaim specs (volumeClaimTemplates, ephemeral volumes),
    emptyDir.sizeLimit and resourceFieldRef.divisor. podSpecPatch is a string: never decoded.
    """
    for path, value in _walk(spec, sp):
        if isinstance(value, dict) and re.search(r"(^|\.)resources\.(requests|limits)$", path):
            for name, q in value.items():
                yield f"{path}.{name}", q
        elif re.search(r"\.emptyDir\.sizeLimit$|\.resourceFieldRef\.divisor$", path):
            yield path, value


def quantity_problems(spec: dict, sp: str) -> list[str]:
    """Quantities that fail resource.Quantity.UnmarshalJSON, so the whole Workflow fails to decode.

    Ported from k8s.io/apimachinery resource.ParseQuantity (see workflows.argo.parse), which
    Argo's decoder (workflow/common/parse.go toWorkflowTypeJSON) runs on every quantity field
    before templating; `argo lint`, `argo submit` and the controller all reject the document.
    """
    problems = []
    for path, value in _quantity_fields(spec, sp):
        error = json_quantity_error(value)
        if error is None:
            continue
        fix = "write a literal quantity such as 1, 500m, 4Gi"
        if isinstance(value, str) and "{{" in value:
            fix += ("; to choose it per run, set resources through the template's podSpecPatch "
                    "(a string Argo substitutes before it decodes it)")
        problems.append(f"{path}: {value!r} is not a Kubernetes quantity ({error}); Argo decodes resources "
                        f"into Go types before substituting {{{{...}}}}, so argo lint/submit reject the workflow: {fix}")
    return problems


def string_value_problems(spec: dict, sp: str) -> list[str]:
    """Parameter values (arguments, inputs, outputs, enum entries) that are not strings.

    Argo's type is wfv1.AnyString (pkg/apis/workflow/v1alpha1/anystring.go UnmarshalJSON): a
    number or boolean is kept as Go's text for it, not as written, a list or map silently as
    nothing, and null means no value.
    """
    problems = []
    for path, value in _walk(spec, sp):
        if not _PARAM_VALUE.search(path) or isinstance(value, str):
            continue
        if value is None:
            problems.append(f"{path}: empty (YAML null), not a string: Argo treats the parameter as having no "
                            "value; write '' for an empty string or remove the key")
        elif isinstance(value, (bool, int, float)):
            text = "true" if value is True else "false" if value is False else repr(value)
            kind = {bool: "a boolean", int: "an integer", float: "a float"}[type(value)]
            kept = argo_string(value)
            effect = (f"Argo keeps it as '{kept}', not as written" if kept != text else
                      "Argo happens to keep the same text, but Hera's models and kubellm's runner want a string")
            problems.append(f"{path}: {text} is {kind}, not a string: {effect}; quote the value in the YAML")
        elif isinstance(value, (datetime.date, datetime.datetime)):
            problems.append(f"{path}: {value} was read as a date, not a string; quote it in the YAML")
        else:
            problems.append(f"{path}: a {type(value).__name__} is not a string: Argo silently keeps an empty "
                            "string; write it as one JSON string")
    return problems


def _composed(node: yaml.Node, path: str) -> Iterator[tuple[str, yaml.Node]]:
    yield path, node
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = str(key.value)
            if name not in _OPAQUE:
                yield from _composed(value, f"{path}.{name}" if path else name)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            yield from _composed(value, f"{path}[{i}]")


def unquoted_scalars(text: str) -> list[str]:
    """Unquoted parameter values in YAML text that Argo's YAML decoder reads as something else than text.

    Argo reads YAML with sigs.k8s.io/yaml (go-yaml v2's `resolve`, ported in
    workflows.argo.parse.yaml_scalar), not PyYAML: it reads `2e-4`, `1_000`, `0x1F` and `017` as
    numbers where PyYAML keeps `2e-4` as text, and `yes`/`on`/`y` as booleans. Every match is one
    "<field path>: <problem>" (a YAML 1.2 parser agrees on all the numbers); in a file of several
    documents the path is prefixed with "#k: ", the document's index. Text that is not YAML
    returns [] (the normal lint reports it).
    """
    try:
        nodes = list(yaml.compose_all(text))
    except yaml.YAMLError:
        return []
    nodes = [n for n in nodes if n is not None]
    problems = []
    for k, root in enumerate(nodes):
        where = f"#{k}: " if len(nodes) > 1 else ""
        for path, node in _composed(root, ""):
            if not (isinstance(node, yaml.ScalarNode) and node.style is None and _PARAM_VALUE.search(path)):
                continue
            value = yaml_scalar(node.value)
            if isinstance(value, str):
                continue
            raw = node.value
            if value is None:
                what = "null: the parameter has no value"
            elif isinstance(value, float) and not math.isfinite(value):
                what = f"{value}, which JSON cannot hold: Argo rejects the whole file"
            else:
                kind = "a boolean" if isinstance(value, bool) else "a number"
                what = f"{kind} and keeps '{argo_string(value)}'"
            problems.append(f"{where}{path}: {raw or '(empty)'} is not quoted: Argo's YAML decoder "
                            f"(sigs.k8s.io/yaml, YAML 1.1 rules) reads it as {what}; quote it: '{raw}'")
    return problems
