"""The thin CLI every step shares: a pydantic config becomes `--flags`, a YAML `--config`
file and `key=value` overrides, validated before any work starts."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Sequence, TypeVar

from pydantic import BaseModel, ValidationError

C = TypeVar("C", bound=BaseModel)


def _takes_collection(annotation: Any) -> bool:
    """Whether a field's type accepts a list or mapping (also inside Optional/Union)."""
    from typing import Union, get_args, get_origin
    import types

    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_takes_collection(a) for a in get_args(annotation))
    return (origin or annotation) in (list, dict, set, tuple)


def _parse_value(raw: str, annotation: Any = list) -> Any:
    # Scalars stay strings (pydantic coerces "20" to an int field, and a str field keeps "007");
    # `[a, b]` and `{k: v}` are read as YAML for list and mapping fields only: a str field keeps a
    # JSON text as it is (plan's `models` takes a JSON list as a string).
    if raw.strip()[:1] in "[{" and _takes_collection(annotation):
        import yaml

        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise SystemExit(f"cannot parse {raw!r} as a YAML list/mapping: {e}") from e
    return raw


def _annotation(cls: type[BaseModel], name: str) -> Any:
    field = cls.model_fields.get(name)
    return field.annotation if field is not None else list  # unknown names are refused by load_config


def load_config(cls: type[C], config_file: str | None = None, overrides: dict[str, Any] | None = None) -> C:
    data: dict[str, Any] = {}
    if config_file:
        from steps._io import read_yaml_mapping

        try:
            data.update(read_yaml_mapping(config_file, f"{cls.__name__} config file", empty_ok=True))
        except (OSError, ValueError) as e:
            raise SystemExit(str(e)) from e
    data.update(overrides or {})
    unknown = sorted(set(data) - set(cls.model_fields))
    if unknown:
        raise SystemExit(
            f"unknown {cls.__name__} field(s) {unknown}"
            + (f" in {config_file}" if config_file else "")
            + f"; valid fields are {sorted(cls.model_fields)}"
        )
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        lines = [f"invalid {cls.__name__}" + (f" in {config_file}" if config_file else "") + ":"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
        raise SystemExit("\n".join(lines)) from e


def main(cls: type[C], run: Callable[[C], Any], doc: str | None = None, argv: Sequence[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML file with config fields (flags and key=value override it)")
    for name, field in cls.model_fields.items():
        default = None if field.is_required() else field.default
        help_text = (field.description or "") + (f" [default: {default}]" if default not in (None, "") else "")
        help_text = help_text.replace("%", "%%")  # argparse formats help with %: "100%" must stay text
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS, help=help_text)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = vars(parser.parse_args(argv))
    config_file = args.pop("config", None)
    debug = args.pop("debug", False) or os.environ.get("KUBELLM_DEBUG") == "1"
    over: dict[str, Any] = {}
    for item in args.pop("overrides", []):
        if "=" not in item:
            parser.error(f"override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        over[k] = _parse_value(v, _annotation(cls, k))
    for k, v in args.items():
        over[k] = _parse_value(v, _annotation(cls, k)) if isinstance(v, str) else v
    cfg = load_config(cls, config_file, over)
    try:
        result = run(cfg)
    except (ValueError, FileNotFoundError) as e:
        # bad input (a study, a CSV, a config value): the message names the file, row or field and
        # the fix; a traceback would only bury it. Other exceptions are bugs and keep theirs.
        if debug:
            raise
        die(f"{e}\n(run with --debug or KUBELLM_DEBUG=1 for the traceback)")
    if result is not None and isinstance(result, (dict, list)):
        print(json.dumps(result, indent=2, default=str))
    return result


def die(msg: str, code: int = 2) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(code)
