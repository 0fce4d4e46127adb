"""study: a prompting study declared in YAML, checked and expanded into request rows.

A study names a CSV of stimuli and says what to ask about every row: a prompt template over the
CSV's columns (`{story_setup}`), an optional system prompt, sampling settings, repeats, states (one
prompt per state, the template's `{state}`), the questions whose candidate answers are scored
exactly (probabilities), and the JSON schema that raw responses are extracted into. Everything is
validated before a single request is sent; errors name the file, row, column or field.

This step writes the expanded rows that the model-calling steps read:

    prompts.jsonl   one chat request per row x state x repeat, every CSV column kept   -> steps.query
    items.jsonl     one scoring request per row x question x state                       -> steps.probabilities
    schema.json     the extraction schema + instructions                                  -> steps.extract
    study.json      the validated study; data.csv, a copy of the CSV it read

    python -m steps.study --study studies/study1.yaml --out runs/exp/prepared/study1
    python -m steps.study --study studies/study2.yaml --out /tmp/s2 limit=10     # first 10 CSV rows

Template syntax is Python's `str.format` with column names only: `{column}`, `{state}`,
`{repeat}`; write `{{` and `}}` for literal braces. Expressions such as `{a.b}` or `{a[0]}` are
refused, so a template cannot reach into anything but the row's text.
"""

from __future__ import annotations

import csv
import io
import re
import string
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from steps._io import begin_output, read_yaml_mapping, sha256_file, to_csv, write_csv, write_json, write_jsonl, write_manifest, write_text  # noqa: F401 - write_csv re-exported

# fields this step adds to every expanded row; a CSV column of the same name would be shadowed
RESERVED = ("id", "row", "state", "repeat", "question", "prompt", "messages", "params", "candidates",
            "answer_prefix", "label")


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.0, ge=0.0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_tokens: int = Field(256, ge=1, description="response length cap in tokens")
    seed: int = Field(0, description="request i of the study is sent with seed + i when sampling")


class Question(BaseModel):
    """A question whose candidate answers are scored exactly (no sampling)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="short name, used in output column names (prior, knowledge, rating)")
    prompt: str = Field(description="user message template over the CSV columns (and {state})")
    candidates: list[str | int | float] | str = Field(description="candidate answers, or a range like '0..100..10%'")
    states: list[str | int] | None = Field(None, description="ask once per state, filling {state}")
    answer_prefix: str = Field("", description="text that opens the assistant turn before the candidate "
                               "(e.g. 'Answer:'); mind the space between it and the candidates")
    values: list[float] | None = Field(None, description="numeric value per candidate (for expected values)")


class Extraction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instructions: str = Field(description="what the extractor is asked to do with a raw response")
    schema_: dict[str, Any] = Field(alias="schema", description="JSON Schema (object) of one extracted record")


class Study(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="study name, used in file names")
    data: str = Field(description="the stimulus CSV, relative to the YAML file")
    id_column: str | None = Field(None, description="column with a unique row id (default: `id` if present, "
                                  "else the row number)")
    system_prompt: str | None = None
    prompt: str = Field(description="user message template over the CSV columns")
    states: list[str | int] | None = Field(None, description="one prompt per state, filling {state}")
    repeats: int = Field(1, ge=1, description="requests per row and state (differently seeded when sampling)")
    sampling: Sampling = Field(default_factory=Sampling)
    probabilities: list[Question] = Field(default_factory=list)
    extract: Extraction | None = None


class StudyConfig(BaseModel):
    study: str = Field(description="study YAML file")
    out: str = Field(description="output folder: prompts.jsonl, items.jsonl, schema.json, study.json, data.csv")
    limit: int | None = Field(None, description="use only the first N rows of the CSV (smoke runs)")


# ----------------------------------------------------------------------------- reading


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a UTF-8 CSV (a BOM is allowed). Quoted fields may hold commas, quotes and
    newlines. Every problem is an error naming the file and the line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"study CSV {path} does not exist") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}: byte {e.start} (line {line}) is not UTF-8 ({raw[e.start:e.start + 1]!r}); "
                         "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from e
    if not text.strip():
        raise ValueError(f"{path} is empty; a study CSV needs a header row and at least one data row")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
        header = [h.strip() for h in header]
        rows = []
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if len(fields) != len(header):
                raise ValueError(f"{path}: line {reader.line_num} has {len(fields)} fields, the header has "
                                 f"{len(header)} ({', '.join(header)}); quote fields that hold commas")
            rows.append(dict(zip(header, fields)))
    except csv.Error as e:
        raise ValueError(f"{path}: line {reader.line_num}: {e}") from e
    blank = [i + 1 for i, h in enumerate(header) if not h]
    if blank:
        raise ValueError(f"{path}: header column(s) {blank} have no name")
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise ValueError(f"{path}: header repeats column(s) {dup}; column names must be unique")
    if not rows:
        raise ValueError(f"{path} has a header ({', '.join(header)}) but no data rows")
    return header, rows


def template_fields(template: str, where: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"{where}: cannot parse the template ({e}); write {{{{ and }}}} for literal braces") from e
    names = []
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name or not re.fullmatch(r"[^.\[\]{}]+", name) or spec or conv:
            raise ValueError(f"{where}: placeholder {{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}} "
                             "is not a plain column name; use {column} (and {{ }} for literal braces)")
        names.append(name)
    return names


def check_template(template: str, columns: list[str], extra: tuple[str, ...], where: str, csv_path: Path) -> None:
    known = set(columns) | set(extra)
    for name in template_fields(template, where):
        if name not in known:
            hint = " (add `states:` to fill {state})" if name == "state" else ""
            raise ValueError(f"{where}: template names column {name!r}, which {csv_path.name} does not have{hint}; "
                             f"its columns are {', '.join(columns)}; change the template to use the columns you have")


def render(template: str, values: dict[str, Any]) -> str:
    return template.format_map(values)


# ----------------------------------------------------------------------------- extraction schema

_TYPES = {"integer": int, "number": float, "string": str, "boolean": bool}
_KEYWORDS = {"type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
             "maxLength", "pattern", "description", "title", "const"}


def schema_model(schema: Any, where: str = "schema") -> type[BaseModel]:
    """A pydantic model for a flat JSON Schema object: properties of type integer, number, string or
    boolean with enum/const/minimum/maximum/length/pattern, `required`, `additionalProperties`.
    That subset is what vLLM's structured outputs and pydantic both enforce the same way; anything
    else is refused here, naming the property, rather than half-enforced."""
    if not isinstance(schema, dict):
        raise ValueError(f"{where}: must be a JSON Schema object (a mapping), got {type(schema).__name__}")
    if schema.get("type") != "object":
        raise ValueError(f"{where}: top-level `type` must be 'object' (got {schema.get('type')!r})")
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        raise ValueError(f"{where}: `properties` must be a non-empty mapping of field name -> schema")
    unknown_top = set(schema) - {"type", "properties", "required", "additionalProperties", "title", "description"}
    if unknown_top:
        raise ValueError(f"{where}: unsupported keyword(s) {sorted(unknown_top)} at the top level")
    required = schema.get("required", list(props))
    if not isinstance(required, list) or not set(required) <= set(props):
        raise ValueError(f"{where}: `required` must list property names (unknown: "
                         f"{sorted(set(required or []) - set(props)) if isinstance(required, list) else required!r})")
    fields: dict[str, Any] = {}
    for name, spec in props.items():
        w = f"{where}.properties.{name}"
        if not isinstance(spec, dict):
            raise ValueError(f"{w}: must be a mapping (got {spec!r})")
        bad = set(spec) - _KEYWORDS
        if bad:
            raise ValueError(f"{w}: unsupported keyword(s) {sorted(bad)}; supported: {sorted(_KEYWORDS)}")
        kind = spec.get("type")
        if "enum" in spec or "const" in spec:
            options = spec.get("enum", [spec.get("const")])
            if not isinstance(options, list) or not options:
                raise ValueError(f"{w}: `enum` must be a non-empty list")
            typ: Any = Literal[tuple(options)]  # type: ignore[valid-type]
        elif kind in _TYPES:
            typ = _TYPES[kind]
        else:
            raise ValueError(f"{w}: `type` must be one of {sorted(_TYPES)} (or give `enum`), got {kind!r}")
        constraints: dict[str, Any] = {}
        for key, arg in (("minimum", "ge"), ("maximum", "le"), ("exclusiveMinimum", "gt"), ("exclusiveMaximum", "lt"),
                         ("minLength", "min_length"), ("maxLength", "max_length"), ("pattern", "pattern")):
            if key in spec:
                constraints[arg] = spec[key]
        if kind == "integer":
            constraints["strict"] = True  # 2.5 or "2" is not a valid integer answer
        if name in required:
            fields[f"f_{len(fields)}"] = (typ, Field(..., alias=name, **constraints))
        else:
            fields[f"f_{len(fields)}"] = (typ | None, Field(None, alias=name, **constraints))
    extra = "forbid" if schema.get("additionalProperties") is False else "ignore"
    try:
        model = create_model("Extracted", __config__=ConfigDict(extra=extra, populate_by_name=False), **fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: cannot build a validator ({e})") from e
    return model


def validate_record(model: type[BaseModel], data: Any) -> dict[str, Any]:
    """The record as the schema's field names -> values, or ValueError with every problem."""
    try:
        obj = model.model_validate(data)
    except ValidationError as e:
        probs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'record'}: {err['msg']} (got {err.get('input')!r})"
                          for err in e.errors())
        raise ValueError(probs) from e
    return obj.model_dump(by_alias=True)


# ----------------------------------------------------------------------------- loading


def load_study(path: str | Path) -> tuple[Study, list[str], list[dict[str, str]]]:
    """The validated study, the CSV's columns and its rows. Raises ValueError naming what is wrong."""
    from steps.probabilities import parse_candidates

    path = Path(path)
    doc = read_yaml_mapping(path, "study file")
    try:
        study = Study.model_validate(doc)
    except ValidationError as e:
        probs = "\n".join(f"  {'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ValueError(f"study file {path} is invalid:\n{probs}") from e
    csv_path = (path.parent / study.data).resolve()
    columns, rows = read_csv(csv_path)
    clash = [c for c in columns if c in RESERVED and c != "id"]
    if clash:
        raise ValueError(f"{csv_path}: column(s) {clash} clash with fields kubellm adds to every row "
                         f"({', '.join(RESERVED)}); rename them in the CSV and the templates")
    id_col = study.id_column or ("id" if "id" in columns else None)
    if id_col:
        if id_col not in columns:
            raise ValueError(f"{path}: id_column {id_col!r} is not a column of {csv_path.name} "
                             f"(columns are {', '.join(columns)})")
        seen: dict[str, int] = {}
        for i, r in enumerate(rows, 1):
            key = r[id_col].strip()
            if not key:
                raise ValueError(f"{csv_path}: data row {i} has an empty {id_col!r}")
            if key in seen:
                raise ValueError(f"{csv_path}: data rows {seen[key]} and {i} share {id_col}={key!r}; ids must be unique")
            seen[key] = i
    extra = ("repeat",) + (("state",) if study.states else ())
    check_template(study.prompt, columns, extra, f"{path}: prompt", csv_path)
    if study.system_prompt:
        check_template(study.system_prompt, columns, extra, f"{path}: system_prompt", csv_path)
    names = [q.name for q in study.probabilities]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: probabilities: question names repeat ({names}); each needs its own name")
    for j, q in enumerate(study.probabilities):
        where = f"{path}: probabilities[{j}] ({q.name})"
        if not re.fullmatch(r"[A-Za-z0-9_]+", q.name):
            raise ValueError(f"{where}: name must be letters, digits and _ (it becomes a column prefix)")
        check_template(q.prompt, columns, ("state",) if q.states else (), f"{where}: prompt", csv_path)
        cands = parse_candidates(q.candidates, f"{where}: candidates")
        if q.values is not None and len(q.values) != len(cands):
            raise ValueError(f"{where}: {len(q.values)} values for {len(cands)} candidates")
    if study.extract is not None:
        schema_model(study.extract.schema_, f"{path}: extract.schema")
    return study, columns, rows


def row_key(study: Study, columns: list[str], row: dict[str, str], index: int) -> str:
    id_col = study.id_column or ("id" if "id" in columns else None)
    return row[id_col].strip() if id_col else str(index)


def expand(study: Study, columns: list[str], rows: list[dict[str, str]]) -> tuple[list[dict], list[dict]]:
    """(prompts, items): the chat requests for raw responses and the scoring requests."""
    from steps.probabilities import parse_candidates

    s = study.sampling
    prompts, items = [], []
    n = 0
    for i, row in enumerate(rows, 1):
        key = row_key(study, columns, row, i)
        data = {c: row[c] for c in columns if c != "id"}
        for state in study.states or [None]:
            for rep in range(study.repeats):
                values = {**row, "repeat": rep, **({"state": state} if state is not None else {})}
                text = render(study.prompt, values)
                system = render(study.system_prompt, values) if study.system_prompt else None
                params: dict[str, Any] = {"temperature": s.temperature, "max_tokens": s.max_tokens}
                if s.top_p < 1.0:
                    params["top_p"] = s.top_p
                if s.temperature > 0:
                    params["seed"] = s.seed + n  # distinct, reproducible seeds per request
                rid = key + (f"-s{state}" if state is not None else "") + (f"-r{rep}" if study.repeats > 1 else "")
                prompts.append({"id": rid, "row": key, **data,
                                **({"state": state} if state is not None else {}),
                                **({"repeat": rep} if study.repeats > 1 else {}),
                                "prompt": text,
                                "messages": ([{"role": "system", "content": system}] if system else [])
                                + [{"role": "user", "content": text}],
                                "params": params})
                n += 1
        for q in study.probabilities:
            cands = parse_candidates(q.candidates, q.name)
            for state in q.states or [None]:
                values = {**row, **({"state": state} if state is not None else {})}
                text = render(q.prompt, values)
                system = render(study.system_prompt, {**values, "repeat": 0}) if study.system_prompt else None
                label = q.name + (f"_s{state}" if state is not None else "")
                items.append({"id": f"{key}-{label}", "row": key, **data, "question": q.name, "label": label,
                              **({"state": state} if state is not None else {}),
                              "messages": ([{"role": "system", "content": system}] if system else [])
                              + [{"role": "user", "content": text}],
                              "answer_prefix": q.answer_prefix, "candidates": cands,
                              **({"values": q.values} if q.values else {})})
    return prompts, items


def run(cfg: StudyConfig) -> dict:
    t0 = time.monotonic()
    study, columns, rows = load_study(cfg.study)
    if cfg.limit is not None:
        if cfg.limit < 1:
            raise ValueError(f"limit must be at least 1 (got {cfg.limit})")
        rows = rows[:cfg.limit]
    prompts, items = expand(study, columns, rows)
    out = begin_output(cfg.out)
    csv_path = (Path(cfg.study).parent / study.data).resolve()
    write_text(out / "data.csv", to_csv(columns, rows))
    write_jsonl(out / "prompts.jsonl", prompts)
    write_jsonl(out / "items.jsonl", items)
    if study.extract is not None:
        write_json(out / "schema.json", {"instructions": study.extract.instructions, "schema": study.extract.schema_})
    write_json(out / "study.json", {**study.model_dump(mode="json", by_alias=True), "columns": columns})
    counts = {"csv_rows": len(rows), "prompts": len(prompts), "items": len(items),
              "candidates": sum(len(it["candidates"]) for it in items)}
    write_manifest(out, "study", cfg, counts=counts, timings={"wall": time.monotonic() - t0},
                   extra={"study": study.name, "source_csv": str(csv_path), "source_csv_sha256": sha256_file(csv_path),
                          "study_sha256": sha256_file(cfg.study)})
    return counts


if __name__ == "__main__":
    from steps._cli import main

    main(StudyConfig, run, __doc__)
