"""MultiNLI-format data for steps.nli_data: the `dataset` values other than the generator.

A `.jsonl` file, a folder holding train.jsonl (validation.jsonl and test.jsonl optional), or a hub
ID (nyu-mll/multi_nli) loaded with `datasets.load_dataset`, imported only when used. Rows are read
into the pairs steps.nli_data writes (premise, hypothesis, label word, genre, id, doc_id); a row that
cannot be read is refused naming its file, line and field.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from steps.nli_model import LABELS

SPLITS = ("train", "validation", "test")
GENERATED = "k8s-reference"  # the `dataset` value that means steps.nli_data's own generator


# Field names as MultiNLI's own files spell them (multinli_1.0_*.jsonl: sentence1, gold_label) and
# the hub's pairID, read as aliases of the names the outputs use.
ALIASES = {"premise": ("premise", "sentence1"), "hypothesis": ("hypothesis", "sentence2"),
           "label": ("label", "gold_label"), "genre": ("genre",), "id": ("id", "pairID")}
# Which hub split feeds each output split, first found wins. MultiNLI's matched validation set
# shares train's genres and its mismatched set does not: the one validates, the other tests.
HUB_SPLITS = {"train": ("train",), "validation": ("validation_matched", "validation"),
              "test": ("validation_mismatched", "test")}
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_FORMS = (f"{GENERATED!r} (pairs generated from the Kubernetes reference), the path of a MultiNLI-format "
          ".jsonl file or of a folder holding train.jsonl, or a hub ID owner/name such as nyu-mll/multi_nli")


def dataset_source(value: str) -> tuple[Literal["generated", "local", "hub"], Path | None]:
    """What a `dataset` value names, and its path when local; anything else is refused here, before
    any work. An existing path wins over a hub ID of the same shape (data/mnli)."""
    if value == GENERATED:
        return "generated", None
    path = Path(value).expanduser()
    if path.exists():
        return "local", path
    if _HUB_ID_RE.match(value) and not value.endswith((".jsonl", ".json")):
        return "hub", None
    raise ValueError(f"dataset={value!r}: no such file or folder, and not a hub ID; dataset takes {_FORMS}")


def external_pair(row: Any, where: str, label_names: Sequence[str] | None = None) -> dict | None:
    """A MultiNLI-format row as {premise, hypothesis, label (word), genre, id (None if absent)}, or
    None for a row with no gold label (-1, "-"). `label_names` are a hub dataset's ClassLabel names
    for integer labels; without them 0/1/2 are MultiNLI's. Errors start with `where`
    ("train.jsonl line 7") and name the field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a JSON {type(row).__name__}, not an object; each line must be one object "
                         "with premise, hypothesis and label")

    def pick(field: str) -> Any:
        return next((row[k] for k in ALIASES[field] if row.get(k) is not None), None)

    names = tuple(label_names or LABELS)
    label = pick("label")
    raw = int(label) if isinstance(label, str) and re.fullmatch(r"\s*-?\d+\s*", label) else label
    if raw is None:
        raise ValueError(f"{where}: no label (label or gold_label); every row needs premise, hypothesis and label")
    if raw == -1 or raw == "-":
        return None  # MultiNLI: the annotators agreed on no label; such pairs have no gold answer
    index = isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(names)
    word = (names[raw] if index else raw if isinstance(raw, str) else "").strip().lower()
    if word not in LABELS:
        ints = "0/1/2" if names == LABELS else f"0..{len(names) - 1} (the dataset's names: {', '.join(names)})"
        if index:  # the whole dataset is labelled otherwise (e.g. entailment / not_entailment)
            raise ValueError(f"{where}: label {label!r} is {names[raw]!r} in the dataset's label names, not an "
                             f"NLI label; use a dataset labelled {', '.join(LABELS)} (this one has {', '.join(names)})")
        raise ValueError(f"{where}: label {label!r} is not {', '.join(LABELS[:2])}, {LABELS[2]} or {ints}; fix the "
                         "row's label (-1 or '-': no gold label, the row is skipped)")
    pair = {"premise": None, "hypothesis": None, "label": word}
    for field in ("premise", "hypothesis"):
        text = pick(field)
        if text is None:
            raise ValueError(f"{where}: no {field} ({' or '.join(ALIASES[field])}); every row needs premise, "
                             "hypothesis and label")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: {field} is {'empty' if isinstance(text, str) else 'not text'}; "
                             f"give the row its {field} text, or drop the row")
        pair[field] = text
    genre, pid = pick("genre"), pick("id")
    return {**pair, "genre": "" if genre is None else str(genre), "id": None if pid is None else str(pid)}


def premise_id(premise: str) -> str:
    """doc_id of an external pair: a stable hash of its premise text, the unit splits keep together."""
    return hashlib.sha256(premise.encode("utf-8")).hexdigest()[:16]


def read_local(path: Path) -> tuple[dict[str, list[dict]], dict[str, int], dict[str, str]]:
    """(pairs per given split, skipped rows per file, file per split) of a .jsonl file (all of it is
    train, to be split) or a folder holding train.jsonl and optionally validation/test.jsonl."""
    if path.is_file():
        if path.suffix != ".jsonl":
            raise ValueError(f"dataset={str(path)!r} is not a .jsonl file; give a MultiNLI-format .jsonl file "
                             "or a folder holding train.jsonl")
        files = {"train": path}
    else:
        files = {s: path / f"{s}.jsonl" for s in SPLITS if (path / f"{s}.jsonl").is_file()}
        if "train" not in files:
            found = sorted(p.name for p in path.glob("*.jsonl")) or ["no .jsonl file"]
            raise ValueError(f"dataset folder {path} holds no train.jsonl (it holds {', '.join(found)}); name the "
                             "files train.jsonl, validation.jsonl, test.jsonl (MultiNLI's multinli_1.0_train, "
                             "_dev_matched, _dev_mismatched), or give one .jsonl file to be split")
    given: dict[str, list[dict]] = {}
    skipped: dict[str, int] = {}
    for split, f in files.items():
        rows, skipped[f.name] = [], 0
        try:
            with f.open(encoding="utf-8") as lines:
                for i, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{f} line {i}: not valid JSON ({e.msg}); each line must be one JSON "
                                         "object") from e
                    pair = external_pair(obj, f"{f} line {i}")
                    if pair is None:
                        skipped[f.name] += 1
                    else:
                        rows.append(pair)
        except UnicodeDecodeError as e:
            raise ValueError(f"{f} is not UTF-8 text ({e.reason}); save it as UTF-8 JSONL") from e
        given[split] = rows
    return given, skipped, {s: f.name for s, f in files.items()}


def hub_split_names(available: Iterable[str]) -> dict[str, str]:
    """The hub split each output split is read from (HUB_SPLITS); splits with none are left out."""
    available = set(available)
    return {s: next(n for n in names if n in available) for s, names in HUB_SPLITS.items()
            if any(n in available for n in names)}


def read_hub(name: str) -> tuple[dict[str, list[dict]], dict[str, int], dict[str, str]]:
    """read_local's answer for a hub dataset, loaded with datasets.load_dataset (its local cache
    when HF_HUB_OFFLINE=1 or the hub cannot be reached)."""
    fix = (f"download it on a machine with hub access (python -c \"import datasets; datasets.load_dataset("
           f"'{name}')\") and bring its cache (HF_HOME, default ~/.cache/huggingface) here, or export it to "
           "JSONL (premise, hypothesis, label) and give that file or folder as dataset")
    try:
        import datasets  # heavy (pyarrow, pandas): only for a hub ID, never at module import
        from datasets.exceptions import DatasetNotFoundError
    except ImportError as e:
        raise ValueError(f"dataset={name!r} is a hub ID, which needs the datasets package (pip install datasets); "
                         "or give a MultiNLI-format JSONL file or folder as dataset") from e
    try:
        loaded = datasets.load_dataset(name)
    except DatasetNotFoundError as e:  # the hub answered: no such dataset, or a gated one without a token
        raise ValueError(f"dataset={name!r} was not found on the hub (a typo, or a gated dataset: set HF_TOKEN); "
                         f"give an existing hub ID or a MultiNLI-format JSONL path ({e})") from e
    except ConnectionError as e:  # offline (HF_HUB_OFFLINE=1) or unreachable, and not in the cache
        offline = " (HF_HUB_OFFLINE=1)" if datasets.config.HF_HUB_OFFLINE else ""
        raise ValueError(f"dataset={name!r} is not in the local datasets cache and the hub cannot be "
                         f"reached{offline}: {e}; {fix}") from e
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"dataset={name!r} loaded as a {type(loaded).__name__}, not a dict of splits; "
                         "export it to JSONL and give that path as dataset")
    chosen = hub_split_names(loaded)
    if "train" not in chosen:
        raise ValueError(f"dataset={name!r} has no train split (it has {', '.join(loaded)}); export the rows to "
                         "train on as train.jsonl and give that folder as dataset")
    known = {k for names in ALIASES.values() for k in names}
    given: dict[str, list[dict]] = {}
    skipped: dict[str, int] = {}
    for split, hub_split in chosen.items():
        ds = loaded[hub_split]
        feature = ds.features.get("label")
        label_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        # column by column: far faster than a Python dict per row for MultiNLI's 393k rows
        columns = ds.select_columns([c for c in ds.column_names if c in known]).to_dict()
        rows, skipped[hub_split] = [], 0
        for i in range(len(ds)):
            pair = external_pair({c: v[i] for c, v in columns.items()}, f"{name} {hub_split} row {i + 1}",
                                 label_names)
            if pair is None:
                skipped[hub_split] += 1
            else:
                rows.append(pair)
        given[split] = rows
    return given, skipped, chosen


def cap_splits(splits: dict[str, list[dict]], max_pairs: int, seed: int) -> dict[str, list[dict]]:
    """A seeded sample of at most max_pairs pairs in all, each split keeping its share (largest
    remainders round up)."""
    total = sum(len(rows) for rows in splits.values())
    if total <= max_pairs:
        return splits
    exact = {s: max_pairs * len(rows) / total for s, rows in splits.items()}
    keep = {s: int(v) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: keep[s] - exact[s])[:max_pairs - sum(keep.values())]:
        keep[s] += 1
    return {s: random.Random(f"{seed}:{s}:sample").sample(rows, keep[s]) for s, rows in splits.items()}
