# Over 600 lines: the generator and its label rules are one argument (why each label is right by
# construction) that reads best in one place; the external-data reader lives in steps.nli_external.
"""nli_data: a Kubernetes NLI data set (premise, hypothesis -> entailment / neutral / contradiction)
built from the Kubernetes v1.28 API reference, with labels that are right by construction.

Premises are field documents of the reference: the field's title, its real description text and,
unless `premise_metadata=false`, one line of metadata the reference states about it:

    Deployment.spec.replicas: Number of desired pods. This is a pointer to distinguish between
    explicit zero and not specified. Defaults to 1. More info: https://...
    Type: integer. Optional.

The title is always there: without it a hypothesis that names a field could not be tied to the
premise (is "Deployment.spec.replicas defaults to 3" about this text or another field?), and the
labels would stop being decidable. The metadata line is there so that type and required-ness
hypotheses are supported by what the premise says, not by metadata an annotator cannot see.

Hypotheses come from facts that the premise text itself states, parsed back out of the premise
(`visible_facts`): the kind in the title, the type and required-ness in the metadata line, a
default stated in one unconditional sentence ("Defaults to 1."), a minimum or maximum stated in
the text ("Minimum value is 1.", "between 0 and 100, inclusive").
  entailment     the fact, reworded (several templates per fact type)
  contradiction  the same fact with a value the premise rules out (another default, an
                 incompatible type, "optional" for a required field, another kind)
  neutral        a true fact about a sibling field whose name the premise never mentions (its
                 class's other fields; fields of its topic when the class has fewer than two)
Entailment and contradiction name their subject as "this field", "the replicas field" or the full
title; neutral names a sibling the same two ways, so the subject's wording alone gives no label away.

Required-ness is read from the generated client (a setter that refuses None), so it is known only
when the reference is read directly: docs.jsonl from `steps.harvest` does not carry it, and a
`--kb` run has no required-ness facts.

Documents stating a default or a bound come first, and a description shared by many classes
(apiVersion, kind, metadata) is used as one premise only. Labels are balanced per document (as
many neutral pairs as entailment and as contradiction pairs). Splits are by premise document (or
by class, `split_unit=class`): all pairs of a document are in one split.

`dataset` other than k8s-reference (the generator above) reads MultiNLI-format data instead: a
.jsonl file, a folder holding train.jsonl (validation.jsonl and test.jsonl optional), or a hub ID
(nyu-mll/multi_nli) loaded with `datasets.load_dataset`, from the local cache when offline (its
validation_matched split validates, validation_mismatched tests). Rows need premise, hypothesis
and label: the word or MultiNLI's 0/1/2 (0 entailment); MultiNLI's own names sentence1, sentence2,
gold_label are read too. Rows without a gold label (-1, "-") are skipped and counted. A split not
given is carved from train by premise text, so no premise is in two carved splits, and max_pairs
keeps a seeded sample of each split in proportion. The generator's settings (kb, k8s_source,
max_per_doc, split_unit, premise_metadata, max_premise_chars) do not apply to such data.

Output folder (replaced atomically): train.jsonl, validation.jsonl, test.jsonl (MultiNLI fields
premise, hypothesis, label, genre = topic, plus doc_id, fact = fact type, spec = the fact's
structured form, id; for external data: its genre or "", its id or <split>-<n>, and doc_id a hash
of the premise text), train_sft.jsonl (the train split as steps.finetune reads it: the prediction
prompt -> the label word) and manifest.json (counts per split, label and fact type, config, seed,
source.dataset).

    python -m steps.nli_data --out runs/nli-data
    python -m steps.nli_data --out runs/nli-data --kb runs/kb max_pairs=600 seed=1
    python -m steps.nli_data --out /tmp/nli max_pairs=30 max_per_doc=3     # tiny
    python -m steps.nli_data --out runs/mnli --dataset data/mnli max_pairs=20000   # train.jsonl, ...
    python -m steps.nli_data --out runs/mnli --dataset nyu-mll/multi_nli          # hub or its cache
"""

from __future__ import annotations

import random
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from steps._cli import main
from steps._io import atomic_path, write_jsonl, write_manifest
from steps.nli_external import GENERATED, SPLITS, cap_splits, dataset_source, premise_id, read_hub, read_local
from steps.nli_model import sft_example
from steps.k8s_reference import K8sFiles, k8s_documents, load_k8s_files, parse_model_file

LABELS = ("entailment", "neutral", "contradiction")  # also MultiNLI's order: 0, 1, 2
# rarer fact types first, so that a document's few pairs favour its most informative facts
FACT_TYPES = ("default", "minimum", "maximum", "required", "type", "kind")

# The client's type names that a premise shows, with the words a hypothesis uses for them.
TYPE_WORDS = {"str": "string", "int": "integer", "bool": "boolean", "datetime": "date-time",
              "list[str]": "list of strings", "dict(str, str)": "map of strings to strings"}
ARTICLE = {"string": "a string", "integer": "an integer", "boolean": "a boolean", "date-time": "a date-time",
           "list of strings": "a list of strings", "map of strings to strings": "a map of strings to strings"}
# Types a hypothesis may claim in contradiction of the premise's type. A date-time is written as a
# JSON string, so "string" is not a contradiction of "date-time" (nor the reverse): left out.
INCOMPATIBLE = {
    "string": ("integer", "boolean", "list of strings", "map of strings to strings"),
    "integer": ("string", "boolean", "list of strings", "map of strings to strings"),
    "boolean": ("string", "integer", "list of strings"),
    "date-time": ("integer", "boolean", "list of strings"),
    "list of strings": ("string", "integer", "boolean", "map of strings to strings"),
    "map of strings to strings": ("string", "integer", "boolean", "list of strings"),
}

# {S}/{s}: the subject at the start of / inside a sentence; {v}: the value; {a}: the value with
# a/an. A required-ness fact takes its wording from its value: the required or optional templates.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "default": ("{S} defaults to {v}.", "The default value of {s} is {v}.",
                "If {s} is not set, its value is {v}.", "Unless it is set explicitly, {s} is {v}."),
    "type": ("{S} holds {v}.", "The value of {s} is {v}.", "{S} takes {v} as its value."),
    "required": ("{S} is required.", "{S} must always be set.", "{S} cannot be left out."),
    "optional": ("{S} is optional.", "{S} can be left unset.", "{S} does not have to be set."),
    "kind": ("{S} belongs to the {v} kind.", "{S} is part of {a} object.", "{S} is a setting of {v} resources."),
    "minimum": ("The minimum value of {s} is {v}.", "The smallest value {s} accepts is {v}.",
                "{v} is the lowest value allowed for {s}."),
    "maximum": ("The maximum value of {s} is {v}.", "The largest value {s} accepts is {v}.",
                "{v} is the highest value allowed for {s}."),
}


class NliDataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path = Field(description="output folder (train/validation/test.jsonl, manifest.json); replaced atomically")
    dataset: str = Field(GENERATED, min_length=1, description=(
        f"the pairs: {GENERATED} (generated from the Kubernetes v1.28 reference), a MultiNLI-format .jsonl "
        "file or a folder with train.jsonl (validation.jsonl, test.jsonl optional), or a hub ID such as "
        "nyu-mll/multi_nli (needs the datasets package; offline, its local cache)"))
    kb: Path | None = Field(None, description="a steps.harvest output folder to read field documents from "
                            "(docs.jsonl); default: read the Kubernetes API reference directly")
    k8s_source: Path | None = Field(None, description="kubernetes wheel or unpacked folder to read the reference "
                                    "from (no kb); default: the installed kubernetes package")
    seed: int = Field(0, description="seed for document order, templates, values and splits")
    max_pairs: int = Field(3000, ge=3, description="at most this many pairs in all splits together")
    max_per_doc: int = Field(6, ge=3, description="at most this many pairs per premise document "
                             "(a third per label); at least 3, one per label")
    train_fraction: float = Field(0.8, ge=0, le=1, description="share of premise documents in train.jsonl")
    validation_fraction: float = Field(0.1, ge=0, le=1, description="share of premise documents in validation.jsonl")
    test_fraction: float = Field(0.1, ge=0, le=1, description="share of premise documents in test.jsonl")
    split_unit: Literal["document", "class"] = Field(
        "document", description="what is kept within one split: each premise document, or each API class "
        "(a stricter split: no sibling-field fact crosses splits)")
    max_premise_chars: int = Field(1000, ge=50, description="skip field documents whose description is longer")
    premise_metadata: bool = Field(True, description="end each premise with a 'Type: ... Required.' line from "
                                   "the reference; without it, type and required-ness facts are not used")

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "NliDataConfig":
        if self.dataset != GENERATED and (self.kb is not None or self.k8s_source is not None):
            raise ValueError(f"kb and k8s_source only apply to dataset={GENERATED} (the generated pairs), and "
                             f"dataset is {self.dataset!r}; unset them, or set dataset={GENERATED}")
        if self.kb is not None and self.k8s_source is not None:
            raise ValueError("kb and k8s_source are both set; give kb (a harvest folder) or k8s_source "
                             "(read the reference directly), not both")
        total = self.train_fraction + self.validation_fraction + self.test_fraction
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train_fraction + validation_fraction + test_fraction is {total:g}, not 1; "
                             "set them to shares that add up to 1 (e.g. 0.8, 0.1, 0.1)")
        if self.train_fraction == 0:
            raise ValueError("train_fraction is 0; give train a share of the documents (e.g. train_fraction=0.8)")
        return self


# --------------------------------------------------------------------------- premise documents


_REQUIRED_RE = re.compile(r"Invalid value for `(\w+)`, must not be `None`")


def reference_docs(src: K8sFiles | None = None) -> list[dict]:
    """Field documents of the reference (the rows `steps.harvest` writes), each with `required`:
    whether the generated client refuses to build the object without the field."""
    src = src if src is not None else load_k8s_files()
    docs, _ = k8s_documents(src, kind_docs=False)
    required: dict[tuple[str, str], bool] = {}
    for name, text in src.files.items():
        if name.startswith("client/models/"):
            attrs = set(_REQUIRED_RE.findall(text))
            for c in parse_model_file(name, text):
                for f in c.fields:
                    required[(f"kubernetes/{name}", f.json)] = f.attr in attrs
    for d in docs:
        d["required"] = required.get((d["file"], d["field"]))
    return docs


def kb_docs(kb: Path) -> list[dict]:
    """Field documents from a harvest output folder."""
    from steps.harvest import read_kb

    return read_kb(kb, ("id", "title", "text", "topic"))


def premise_text(doc: dict, metadata: bool = True) -> str:
    """Title, description and (metadata) the 'Type: integer. Required.' line of a field document."""
    # one line of description: the metadata line must stay the only line after it
    text = f"{doc['title']}: {doc['text'].strip().replace(chr(10), ' ')}"
    if not metadata:
        return text
    meta = []
    if doc.get("type") in TYPE_WORDS:
        meta.append(f"Type: {TYPE_WORDS[doc['type']]}.")
    req = _required_shown(doc)
    if req is not None:
        meta.append("Required." if req else "Optional.")
    return text + ("\n" + " ".join(meta) if meta else "")


def _required_shown(doc: dict) -> bool | None:
    # The metadata line states required-ness only where the description does not say otherwise
    # (some descriptions call a field "Required." that the client accepts empty, or the reverse):
    # a premise that contradicts itself would make the label a matter of opinion.
    req = doc.get("required")
    if req is None:
        return None
    if re.search(r"\boptional\b" if req else r"\brequired\b", doc["text"], re.I):
        return None
    return bool(req)


# --------------------------------------------------------------------------- facts a premise states


_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")
_DEFAULT_WORD_RE = re.compile(r"\bdefault(?:s|ed)?\b", re.I)
# One whole, unconditional sentence stating a default ("Defaults to 1.", "Default is TCP.",
# "If unset, defaults to 0.", "readOnly Defaults to false (read/write)."). A sentence with more
# after the value ("Defaults to Always if :latest tag is specified, ...") does not match.
_DEFAULT_RE = re.compile(
    r"^(?:Optional: |\w+ (?:is Optional: )?(?=[Dd]efault)|This field |It |"
    r"If (?:unset|unspecified|not specified|not set), (?:it |this field )?)?"
    r"(?:[Dd]efaults? to|[Dd]efault(?: value)? is|[Tt]he default value is|This field has a default value of|Default)\s+"
    r"(?P<v>\"[^\"`]*\"|'[^'`]*'|-?\d+(?:\.\d+)?(?:%|s\b| (?:seconds?|minutes?|hours?|pods?))?|[A-Za-z/*][\w./*-]*)"
    r"(?:\s*\([^()]*\))?(?: for backward compatibility)?\.?$")
_NOT_VALUES = {"is", "to", "the", "a", "an", "nil", "null", "empty", "no", "same"}
_NUM = r"(\d+)(?![\d^.]\d)"  # not 10^5, not 1.5
# "must be non-negative" states a minimum of 0 too: a text that also says "Minimum value is 1"
# then states two minimums, and neither is used
_MIN_RES = [re.compile(rf"\bMinimum value is {_NUM}"), re.compile(rf"\bgreater than or equal to (zero|{_NUM})"),
            re.compile(r"\bmust be a? ?(non-negative) (?:integer|number)"),
            re.compile(rf"\bbetween {_NUM} and \d+, inclusive"), re.compile(rf"\({_NUM}-\d+, inclusive\)")]
_MAX_RES = [re.compile(rf"\bMaximum value is {_NUM}"), re.compile(rf"\bless than or equal to {_NUM}"),
            re.compile(rf"\bbetween \d+ and {_NUM}, inclusive"), re.compile(rf"\(\d+-{_NUM}, inclusive\)")]
_CONDITION_RE = re.compile(r"\b(?:if|when|unless)\b", re.I)


def _split_premise(premise: str) -> tuple[str, str, str]:
    """(title, description, metadata line) of a premise built by premise_text."""
    head, _, meta = premise.partition("\n")
    title, _, desc = head.partition(": ")
    return title, desc, meta


def _stated_default(desc: str) -> str | None:
    sentences = [s for s in _SENTENCE_RE.split(desc) if _DEFAULT_WORD_RE.search(s)]
    if len(sentences) != 1:
        return None  # no default, or several sentences about defaults that might qualify each other
    m = _DEFAULT_RE.match(sentences[0].strip())
    if not m:
        return None
    v = m["v"][1:-1] if m["v"][:1] in "\"'" else m["v"].rstrip(".")
    v = "0" if v == "zero" else v
    return None if v.lower() in _NOT_VALUES else v


def _stated_bound(desc: str, patterns: list[re.Pattern]) -> str | None:
    found = set()
    for s in _SENTENCE_RE.split(desc):
        if _CONDITION_RE.search(s):
            continue
        for p in patterns:
            for m in p.finditer(s):
                found.add("0" if m[1] in ("zero", "non-negative") else str(int(m[1])))
    return found.pop() if len(found) == 1 else None


def visible_facts(doc: dict, metadata: bool = True) -> dict[str, str]:
    """The facts a reader can take from the premise text of `doc`: fact type -> value.

    Read back out of the premise string itself, so nothing the premise does not show is used.
    The kind is the first part of the title when the title is a path from a top-level kind
    (Deployment.spec.replicas); a shared class's title (Container.image) names no kind."""
    title, desc, meta = _split_premise(premise_text(doc, metadata))
    facts: dict[str, str] = {}
    kind = doc.get("kind")
    if kind and title.startswith(kind + "."):
        facts["kind"] = kind
    m = re.search(r"Type: ([a-z -]+)\.", meta)
    if m and m[1] in ARTICLE:
        facts["type"] = m[1]
    m = re.search(r"\b(Required|Optional)\.$", meta)
    if m:
        facts["required"] = m[1].lower()
    stated = {"default": _stated_default(desc), "minimum": _stated_bound(desc, _MIN_RES),
              "maximum": _stated_bound(desc, _MAX_RES)}
    facts.update({k: v for k, v in stated.items() if v is not None})
    return facts


def mentions(text: str, name: str) -> bool:
    """Whether `text` names a field: its JSON name or its words (readinessGates, readiness gates)."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).lower()
    return any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text, re.I) for n in {name, words})


def _field_name(doc_id: str) -> str:
    return doc_id.rsplit("/", 1)[-1]


_UNITS = {"second": "s", "seconds": "s", "minute": "min", "minutes": "min", "hour": "h", "hours": "h", "pods": "pod"}


def _same_value(fact: str, a: str, b: str) -> bool:
    if fact in ("type", "required", "kind"):
        return a == b
    na, nb = re.match(r"^(-?\d+(?:\.\d+)?)(.*)$", a), re.match(r"^(-?\d+(?:\.\d+)?)(.*)$", b)
    if na and nb:
        if re.match(r"^0\d", a) or re.match(r"^0\d", b):
            return a == b  # file modes: 0644 is not 644
        # numbers compare as numbers; a unit on one side only ("30" and "30 seconds") is no conflict
        units = {_UNITS.get(u.strip(), u.strip()) for u in (na[2], nb[2])} - {""}
        return float(na[1]) == float(nb[1]) and len(units) <= 1
    return a.strip().lower() == b.strip().lower()


def label_for(premise_doc: dict, fact: dict, metadata: bool = True) -> str | None:
    """The label of hypothesis `fact` ({"fact", "subject", "value"}) against the premise of
    `premise_doc`, decided from what the premise states; None where the premise does not settle it
    by these rules (then the generator never proposes the pair)."""
    ftype, subject, value = fact["fact"], fact["subject"], str(fact["value"])
    premise = premise_text(premise_doc, metadata)
    if subject != premise_doc["id"]:
        # another field: the premise says nothing about it unless it names it. "This field" can
        # only mean the premise's own field; and a kind claim about a field named by its full path
        # (Deployment.spec.paused) is settled by the hypothesis itself, not by the premise.
        if (fact.get("style") == "this" or (ftype == "kind" and fact.get("style") != "named")
                or mentions(premise, _field_name(subject))):
            return None
        return "neutral"
    facts = visible_facts(premise_doc, metadata)
    if ftype not in facts:
        return None
    if _same_value(ftype, facts[ftype], value):
        return "entailment"
    if ftype == "type" and value not in INCOMPATIBLE.get(facts["type"], ()):
        return None
    if ftype == "kind" and mentions(_split_premise(premise)[1], value):
        return None  # "Template describes the pods ...": another kind in the text muddies the claim
    return "contradiction"


# --------------------------------------------------------------------------- candidate hypotheses


def _other_values(fact: str, value: str, premise: str, pools: dict[str, Any]) -> list[str]:
    """Values the premise rules out for `fact`, most plausible first."""
    if fact == "type":
        return list(INCOMPATIBLE.get(value, ()))
    if fact == "required":
        return ["optional" if value == "required" else "required"]
    if fact == "kind":
        # not a kind the description names, nor one with a field of the same name (ReplicaSet for
        # Deployment.spec.replicas): both would make a reader hesitate, though the path settles it
        name = _split_premise(premise)[0].rsplit(".", 1)[-1]
        kinds = [k for k in pools["kind"] if k != value and not mentions(_split_premise(premise)[1], k)
                 and name not in pools["kind_fields"].get(k, ())]
        # a kind of the same topic first: the harder, more plausible claim
        topic = pools["kind_topic"].get(value)
        return sorted(kinds, key=lambda k: pools["kind_topic"].get(k) != topic)
    if value.lower() in ("true", "false"):
        return ["false" if value.lower() == "true" else "true"]
    m = re.match(r"^(\d+)(.*)$", value)
    if m:
        n, unit, seen = int(m[1]), m[2], set(re.findall(r"\d+", premise))
        if len(m[1]) > 1 and m[1].startswith("0"):  # file modes (0644)
            return [v for v in ("0600", "0755", "0444", "0777") if v != m[1]]
        alts = [n + 1, n * 2, n * 10, n - 1, 0, 1, 5, 10, 30, 100]
        word = unit.strip().rstrip("s")
        if word in ("second", "minute", "hour", "pod"):  # "1 second", "2 seconds"
            return list(dict.fromkeys(f"{a} {word}{'' if a == 1 else 's'}" for a in alts
                                      if a >= 0 and a != n and str(a) not in seen))
        return list(dict.fromkeys(f"{a}{unit}" for a in alts if a >= 0 and a != n and str(a) not in seen))
    if fact != "default":
        return []
    # a string default: values of the same shape that the description names ("TCP" -> "UDP"),
    # else another field's default of that shape
    desc = _split_premise(premise)[1]
    named = re.findall(r"[\"`']([\w/*.-]+)[\"`']", desc)
    if _shape(value) in ("acronym", "camel"):
        # bare enum-like words: TCP, UDP; IfNotPresent (two humps at least, not a capitalised word)
        named += [w for w in re.findall(r"\b[A-Z]{3,5}\b|\b[A-Z][a-z]+(?:[A-Z][a-z0-9]*)+\b", desc)
                  if w not in pools["classes"] and w[:-1] not in pools["classes"]]  # not type names
    pool = [v for v in dict.fromkeys(named + pools["default"]) if _shape(v) == _shape(value)]
    return [v for v in pool if v.lower() != value.lower() and v.lower() not in _NOT_VALUES]


def _shape(v: str) -> str:
    if v.lower() in ("true", "false") or re.match(r"^\d", v):
        return "literal"
    if v.startswith("/"):
        return "path"
    if re.fullmatch(r"[A-Z]{2,}", v):
        return "acronym"  # TCP, HTTP
    if re.fullmatch(r"[A-Z][a-z]+(?:[A-Z][a-z0-9]*)*", v):
        return "camel"  # File, IfNotPresent
    return "word" if re.fullmatch(r"[a-z][\w-]*", v) else "other"


def candidate_facts(doc: dict, siblings: list[dict], pools: dict[str, Any],
                    metadata: bool = True) -> dict[str, list[dict]]:
    """Every fact the generator may state about `doc`'s premise, by label: the premise's own facts
    (entailment), each with the values that contradict it, and siblings' facts (neutral)."""
    premise = premise_text(doc, metadata)
    facts = visible_facts(doc, metadata)
    out: dict[str, list[dict]] = {lab: [] for lab in LABELS}
    for fact in FACT_TYPES:
        if fact in facts:
            out["entailment"].append({"fact": fact, "subject": doc["id"], "value": facts[fact]})
            for v in _other_values(fact, facts[fact], premise, pools):
                out["contradiction"].append({"fact": fact, "subject": doc["id"], "value": v})
    for sib in siblings:
        if sib["id"] == doc["id"] or mentions(premise, _field_name(sib["id"])):
            continue
        for fact, v in visible_facts(sib, metadata).items():
            out["neutral"].append({"fact": fact, "subject": sib["id"], "value": v})
    return out


def render(spec: dict, subject_doc: dict, same: bool) -> str:
    """The hypothesis sentence of a fact spec; `style` (this/named/path) and `template` pick the wording."""
    style, t = spec.get("style", "path"), spec.get("template", 0)
    if style == "this" and not same:
        raise ValueError("style 'this' can only name the premise's own field")
    s = {"this": "this field", "named": f"the {subject_doc['field'] or _field_name(subject_doc['id'])} field",
         "path": subject_doc["title"]}[style]
    v = spec["value"]
    templates = TEMPLATES[v if spec["fact"] == "required" else spec["fact"]]
    v = ARTICLE.get(v, v) if spec["fact"] == "type" else v or "the empty string"
    a = ("an " if v[:1].lower() in "aeiou" else "a ") + v
    out = templates[t % len(templates)].format(S=s[:1].upper() + s[1:], s=s, v=v, a=a)
    return out[:1].upper() + out[1:]


def build_index(docs: Iterable[dict], metadata: bool = True, max_premise_chars: int = 1000) -> dict[str, Any]:
    """The field documents usable as premises, grouped by class and topic, with the value pools
    contradictions draw from (kinds, string defaults)."""
    fields = sorted((d for d in docs if d.get("doc_type", "field") == "field" and d.get("text")
                     and len(d["text"]) <= max_premise_chars), key=lambda d: d["id"])
    by_class: dict[str, list[dict]] = {}
    by_topic: dict[str, list[dict]] = {}
    kind_fields: dict[str, set[str]] = {}
    for d in fields:
        by_class.setdefault(d["id"].rsplit("/", 1)[0], []).append(d)
        by_topic.setdefault(d["topic"], []).append(d)
        kind_fields.setdefault(d["title"].split(".", 1)[0], set()).add(d["title"].rsplit(".", 1)[-1])
    pools = {"kind": sorted({d["kind"] for d in fields if d.get("kind")}), "kind_fields": kind_fields,
             "classes": {d["class"] for d in fields if d.get("class")},
             "kind_topic": {d["kind"]: d["topic"] for d in fields if d.get("kind") and d["title"].count(".") == 1},
             "default": sorted({v for d in fields if (v := visible_facts(d, metadata).get("default"))})}
    return {"fields": fields, "by_id": {d["id"]: d for d in fields}, "by_class": by_class, "by_topic": by_topic,
            "pools": pools}


def candidates_for(doc: dict, index: dict[str, Any], seed: int = 0, metadata: bool = True) -> dict[str, list[dict]]:
    """candidate_facts of `doc` with the siblings generate_pairs uses: the other fields of its class,
    and when it has fewer than two, also a seeded sample of fields of other classes in its topic."""
    cls = doc["id"].rsplit("/", 1)[0]
    siblings = [d for d in index["by_class"].get(cls, []) if d["id"] != doc["id"]]
    if len(siblings) < 2:
        topic = [d for d in index["by_topic"].get(doc["topic"], []) if d["id"].rsplit("/", 1)[0] != cls]
        siblings += random.Random(f"{seed}:{doc['id']}:siblings").sample(topic, min(8, len(topic)))
    return candidate_facts(doc, siblings, index["pools"], metadata)


def generate_pairs(docs: Iterable[dict] | K8sFiles, seed: int = 0, max_pairs: int = 3000, max_per_doc: int = 6,
                   metadata: bool = True, max_premise_chars: int = 1000) -> list[dict]:
    """Labelled pairs from field documents (harvest rows or `reference_docs()`; a K8sFiles is read
    with reference_docs). Deterministic given `seed`; every document gives as many neutral pairs as
    entailment and as contradiction pairs (up to max_per_doc // 3 each)."""
    if isinstance(docs, K8sFiles):
        docs = reference_docs(docs)
    index = build_index(docs, metadata, max_premise_chars)
    fields, by_id = index["fields"], index["by_id"]
    order = list(fields)
    random.Random(seed).shuffle(order)
    # Documents stating a default or a bound first: they are few and carry the most varied facts.
    # Then one premise per description text: apiVersion, kind and metadata say the same words in
    # hundreds of classes, and would otherwise fill the set with one premise under many titles.
    rare = {d["id"] for d in fields if {"default", "minimum", "maximum"} & set(visible_facts(d, metadata))}
    order.sort(key=lambda d: d["id"] not in rare)
    seen_text: set[str] = set()
    per_label = max(1, max_per_doc // 3)
    pairs: list[dict] = []
    for doc in order:
        if len(pairs) + 3 > max_pairs:
            break
        if doc["text"] in seen_text:
            continue
        seen_text.add(doc["text"])
        # a generator per document: its pairs do not change when other documents come or go
        rng = random.Random(f"{seed}:{doc['id']}")
        cands = candidates_for(doc, index, seed, metadata)
        with_contra = [f for f in FACT_TYPES if any(c["fact"] == f for c in cands["contradiction"])]
        neutral_by_subject: dict[str, list[dict]] = {}
        for c in cands["neutral"]:
            neutral_by_subject.setdefault(c["subject"], []).append(c)
        k = min(per_label, len(with_contra), len(neutral_by_subject), (max_pairs - len(pairs)) // 3)
        if k == 0:
            continue
        rng.shuffle(with_contra)
        chosen = sorted(with_contra, key=lambda f: f not in ("default", "minimum", "maximum"))[:k]
        picked: list[tuple[str, dict]] = []
        for f in chosen:
            picked.append(("entailment", next(c for c in cands["entailment"] if c["fact"] == f)))
            alts = [c for c in cands["contradiction"] if c["fact"] == f]
            # most plausible first: a default the description names, a kind of the same topic
            first = f == "default" or (f == "kind" and index["pools"]["kind_topic"].get(alts[0]["value"])
                                       == doc["topic"])
            picked.append(("contradiction", alts[0] if first and rng.random() < 0.6 else rng.choice(alts)))
            # a neutral pair of the same fact type where a sibling has one: then the fact type
            # of a hypothesis says nothing about its label
            subjects = sorted(neutral_by_subject)
            same_type = [s for s in subjects if any(c["fact"] == f for c in neutral_by_subject[s])]
            subj = rng.choice(same_type or subjects)
            options = [c for c in neutral_by_subject.pop(subj) if c["fact"] == f or not same_type]
            picked.append(("neutral", rng.choice(options)))
        premise = premise_text(doc, metadata)
        for i, (label, spec) in enumerate(picked):
            same = spec["subject"] == doc["id"]
            # "this field" only ever names the premise's own field, so it is used sparingly
            if spec["fact"] == "kind":  # see label_for: a kind claim names a sibling by its name only
                styles: tuple[str, ...] = ("this", "path") if same else ("named",)
            else:
                styles = ("this", "named", "named", "path", "path") if same else ("named", "path")
            spec = {**spec, "style": rng.choice(styles), "template": rng.randrange(6)}
            pairs.append({"id": f"{doc['id']}#{i}", "premise": premise,
                          "hypothesis": render(spec, by_id[spec["subject"]], same), "label": label,
                          "genre": doc["topic"], "doc_id": doc["id"], "fact": spec["fact"], "spec": spec})
    return pairs


def label_agreement(pairs: list[dict], labelled: list[dict]) -> float:
    """Share of the hand-labelled rows whose (premise, hypothesis) the pairs label the same way.

    Rows of `labelled` with no pair of the same premise and hypothesis are not counted; with no
    row in common at all there is nothing to compare, which is an error."""
    by_text = {(p["premise"], p["hypothesis"]): p["label"] for p in pairs if p.get("label")}
    common = [r for r in labelled if (r["premise"], r["hypothesis"]) in by_text]
    if not common:
        raise ValueError("no hand-labelled pair has the premise and hypothesis of a generated pair; "
                         "compare pairs built from the same premises")
    return sum(by_text[(r["premise"], r["hypothesis"])] == r["label"] for r in common) / len(common)


def external_splits(cfg: NliDataConfig, kind: str, path: Path | None) -> tuple[dict[str, list[dict]], dict]:
    """The output splits of MultiNLI-format data, and what the manifest says of where they came from."""
    given, skipped, names = read_local(path) if kind == "local" else read_hub(cfg.dataset)
    for rows in given.values():
        for p in rows:
            p["doc_id"] = premise_id(p["premise"])
    # A split not given (or given without one labelled row) is carved from train by premise, with
    # train and the missing splits sharing train's rows by their configured fractions.
    missing = [s for s in SPLITS[1:] if not given.get(s)]
    fractions = {"train": cfg.train_fraction, "validation": cfg.validation_fraction, "test": cfg.test_fraction}
    share = sum(fractions[s] for s in ("train", *missing))
    carved = split_pairs(given["train"], cfg, [fractions[s] / share if s in ("train", *missing) else 0.0
                                               for s in SPLITS], by_document=True)
    splits = {s: carved[s] if s == "train" or s in missing else given[s] for s in SPLITS}
    splits = cap_splits(splits, cfg.max_pairs, cfg.seed)
    for name, rows in splits.items():
        # mixed order, as split_pairs leaves it: a reader taking the first N rows gets many premises
        random.Random(f"{cfg.seed}:{name}").shuffle(rows)
        splits[name] = [{**p, "id": p["id"] or f"{name}-{n}"} for n, p in enumerate(rows, 1)]
    origin = {s: names[s] if s in names and s not in missing else f"carved from {names['train']}" for s in SPLITS}
    return splits, {"dataset": cfg.dataset, **({"path": str(path.resolve())} if path else {}),
                    "splits": origin, "skipped_no_label": skipped}

# --------------------------------------------------------------------------- the step


def split_pairs(pairs: list[dict], cfg: NliDataConfig, fractions: Sequence[float] | None = None,
                by_document: bool = False) -> dict[str, list[dict]]:
    """Assign whole units (documents or classes) to splits by the configured fractions (or
    `fractions`: train, validation, test). `by_document`: documents, whatever split_unit says."""
    def unit(p: dict) -> str:
        return p["doc_id"] if by_document or cfg.split_unit == "document" else p["doc_id"].rsplit("/", 1)[0]

    units = sorted({unit(p) for p in pairs})
    random.Random(f"{cfg.seed}:split").shuffle(units)
    fractions = list(fractions or [cfg.train_fraction, cfg.validation_fraction, cfg.test_fraction])
    sizes = [int(round(f * len(units))) for f in fractions]
    sizes[0] = len(units) - sizes[1] - sizes[2]
    # tiny sets: a split with a share still gets one unit, taken from train while train keeps one
    for i in (1, 2):
        if fractions[i] > 0 and sizes[i] == 0 and sizes[0] > 1:
            sizes[i], sizes[0] = 1, sizes[0] - 1
    where: dict[str, str] = {}
    start = 0
    for name, size in zip(SPLITS, sizes):
        for u in units[start:start + size]:
            where[u] = name
        start += size
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for p in pairs:
        out[where[unit(p)]].append(p)
    for name, rows in out.items():
        # mixed order: a reader taking the first N rows gets every label and many documents
        random.Random(f"{cfg.seed}:{name}").shuffle(rows)
    return out


def split_counts(splits: dict[str, list[dict]]) -> dict[str, Any]:
    """The manifest's counts every source shares: pairs, premise documents and labels, per split and in all."""
    pairs = [p for rows in splits.values() for p in rows]
    counts: dict[str, Any] = {"pairs": len(pairs), "premise_documents": len({p["doc_id"] for p in pairs})}
    for name, rows in splits.items():
        counts[name] = {"pairs": len(rows), "documents": len({p["doc_id"] for p in rows}),
                        "labels": {lab: sum(p["label"] == lab for p in rows) for lab in LABELS}}
    counts["labels"] = {lab: sum(p["label"] == lab for p in pairs) for lab in LABELS}
    counts["genres"] = dict(sorted(Counter(p["genre"] for p in pairs).items()))
    return counts


def run(cfg: NliDataConfig) -> dict:
    t0 = time.monotonic()
    kind, path = dataset_source(cfg.dataset)  # a value that names nothing fails before any work
    packages = ["pydantic"]
    if kind != "generated":
        splits, source = external_splits(cfg, kind, path)
        packages += ["datasets"] if kind == "hub" else []
        if not splits["train"]:
            raise ValueError(f"dataset={cfg.dataset!r} gave no labelled pair for train; give rows with premise, "
                             "hypothesis and a label (entailment, neutral, contradiction or 0/1/2)")
        t_read = time.monotonic() - t0
        counts = split_counts(splits)
        counts["skipped_no_label"] = sum(source["skipped_no_label"].values())
        # carved splits share no premise; given ones (a folder's files, the hub's splits) may
        owners = Counter(d for rows in splits.values() for d in {p["doc_id"] for p in rows})
        shared = counts["premises_in_two_splits"] = sum(n > 1 for n in owners.values())
        if shared:
            print(f"nli_data: {shared} premise(s) of {cfg.dataset} are in more than one split (the given "
                  "files share them); see manifest.json counts.premises_in_two_splits", file=sys.stderr)
    else:
        if cfg.kb is not None:
            docs = kb_docs(cfg.kb)
            source = {"dataset": GENERATED, "kb": str(Path(cfg.kb).resolve())}
        else:
            src = load_k8s_files(cfg.k8s_source)
            docs = reference_docs(src)
            source = {"dataset": GENERATED, "kubernetes_client_version": src.version, "api_release": src.release,
                      "read_from": src.origin}
        t_read = time.monotonic() - t0
        pairs = generate_pairs(docs, cfg.seed, cfg.max_pairs, cfg.max_per_doc, cfg.premise_metadata,
                               cfg.max_premise_chars)
        if not pairs:
            raise ValueError("no field document gave a pair: the documents need field descriptions (doc_type "
                             "'field', as steps.harvest writes for k8s-api) no longer than max_premise_chars")
        splits = split_pairs(pairs, cfg)
        counts = split_counts(splits)
        for name, rows in splits.items():
            counts[name]["facts"] = dict(sorted(Counter(p["fact"] for p in rows).items()))
        counts["facts"] = {f: dict(Counter(p["label"] for p in pairs if p["fact"] == f)) for f in FACT_TYPES}
    with atomic_path(cfg.out, is_dir=True) as tmp:
        for name, rows in splits.items():
            write_jsonl(tmp / f"{name}.jsonl", rows)
        # the train split as steps.finetune reads it (question -> the label word)
        write_jsonl(tmp / "train_sft.jsonl", [sft_example(p["premise"], p["hypothesis"], p["label"])
                                              for p in splits["train"]])
        write_manifest(tmp, "nli_data", cfg, counts=counts,
                       timings={"read": round(t_read, 3), "total": round(time.monotonic() - t0, 3)},
                       packages=packages, extra={"seed": cfg.seed, "source": source})
    return {"out": str(cfg.out), "pairs": counts["pairs"], "labels": counts["labels"],
            **{name: counts[name]["pairs"] for name in SPLITS},
            **({"skipped_no_label": counts["skipped_no_label"]} if "skipped_no_label" in counts else {})}


if __name__ == "__main__":
    main(NliDataConfig, run, __doc__)
