"""What a rendered Workflow refers to: templates, DAG tasks, their dependencies and `{{...}}` variables.

The local runner (can this run here?) and `kubellm lint` (is anything dangling? what does it need from
the cluster?) both read a workflow through this module, so they agree on where a reference lives and
which names are in its scope:

    wf = WorkflowRefs(doc["spec"])
    for use in wf.uses():                  # every {{...}}: field path, name, template, task
        ...
    deps, logic, problems = wf.graph(t)    # a DAG template's `depends`, parsed once
    for task in wf.tasks(t): task.ancestors, task.has_item, wf.template_of(task)
    for path, container in t.containers(): ...

It reads and never judges: each caller words its own problems. The expression grammar lives here too,
because `depends` names tasks through it; evaluating `when` belongs to the runner.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Hashable, Iterator

TEMPLATE_TAG = re.compile(r"\{\{(.*?)\}\}")
# the results a `depends` expression may test (task.Succeeded, ...)
RESULTS = ("Succeeded", "Failed", "Errored", "Skipped", "Daemoned", "AnySucceeded", "AllFailed")
# a task's fields that Argo substitutes in the scope of its DAG (the rest name templates or tasks)
TASK_FIELDS = ("arguments", "when", "withParam", "withItems")
# a task with one of these runs once per item and may use {{item}}
LOOP_FIELDS = ("withItems", "withParam", "withSequence")
# the kinds of template Argo knows; a template is exactly one of them
TEMPLATE_KINDS = ("container", "dag", "script", "steps", "resource", "suspend", "http", "plugin", "containerSet",
                  "data")


def iter_strings(value: Any, path: str, skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, str]]:
    """Yield (field path, string) for every string below value; keys in `skip` are left out at any depth."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from iter_strings(v, f"{path}[{i}]", skip)
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in skip:
                yield from iter_strings(v, f"{path}.{k}" if path else k, skip)


# ---------------------------------------------------------------------------------------------
# The expression grammar of `depends` and `when` (govaluate, as Argo uses it)

_EXPR_TOKEN = re.compile(
    r"""\s*(?:("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(&&|\|\||==|!=|<=|>=|=~|!~|[<>!()])|([^\s()!=<>&|"']+))"""
)


def parse_expression(text: str) -> tuple:
    """Parse a govaluate-style boolean expression (Argo `when`, `depends`) into a small tree.

    Grammar: or := and ('||' and)* ; and := cmp ('&&' cmp)* ; cmp := unary (op unary)? ;
    unary := '!' unary | '(' or ')' | literal. Literals are quoted strings or bare words;
    bare words are resolved by the evaluator (numbers, true/false, task results, plain strings).
    """
    tokens: list[tuple[str, str]] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        m = _EXPR_TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"cannot read {text[pos:]!r} in {text!r}")
        if m.group(1) is not None:
            tokens.append(("str", re.sub(r"\\(.)", r"\1", m.group(1)[1:-1])))
        elif m.group(2) is not None:
            tokens.append(("op", m.group(2)))
        else:
            tokens.append(("word", m.group(3)))
        pos = m.end()
    if not tokens:
        raise ValueError("empty expression")
    i = 0

    def peek() -> tuple[str, str] | None:
        return tokens[i] if i < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal i
        i += 1
        return tokens[i - 1]

    def parse_or() -> tuple:
        node = parse_and()
        while peek() == ("op", "||"):
            take()
            node = ("or", node, parse_and())
        return node

    def parse_and() -> tuple:
        node = parse_cmp()
        while peek() == ("op", "&&"):
            take()
            node = ("and", node, parse_cmp())
        return node

    def parse_cmp() -> tuple:
        node = parse_unary()
        tok = peek()
        if tok and tok[0] == "op" and tok[1] in ("==", "!=", "<", ">", "<=", ">=", "=~", "!~"):
            take()
            node = ("cmp", tok[1], node, parse_unary())
        return node

    def parse_unary() -> tuple:
        tok = peek()
        if tok is None:
            raise ValueError(f"{text!r} ends too early")
        take()
        if tok == ("op", "!"):
            return ("not", parse_unary())
        if tok == ("op", "("):
            node = parse_or()
            if peek() != ("op", ")"):
                raise ValueError(f"missing ')' in {text!r}")
            take()
            return node
        if tok[0] == "str":
            return ("str", tok[1])
        if tok[0] == "word":
            return ("word", tok[1])
        raise ValueError(f"unexpected {tok[1]!r} in {text!r}")

    tree = parse_or()
    if i != len(tokens):
        raise ValueError(f"unexpected {tokens[i][1]!r} in {text!r}")
    return tree


def depends_tasks(tree: tuple) -> list[str]:
    """Task names a parsed `depends` expression refers to, in order of appearance."""
    if tree[0] == "word":
        return [tree[1].split(".")[0] if tree[1].rsplit(".", 1)[-1] in RESULTS else tree[1]]
    if tree[0] == "str":
        raise ValueError(f"quoted {tree[1]!r} has no meaning in depends")
    if tree[0] == "cmp":
        raise ValueError(f"comparison {tree[1]!r} has no meaning in depends")
    names: list[str] = []
    for sub in tree[1:]:
        for n in depends_tasks(sub):
            if n not in names:
                names.append(n)
    return names


def _words(tree: tuple) -> list[str]:
    if tree[0] == "word":
        return [tree[1]]
    return [w for sub in tree[1:] if isinstance(sub, tuple) for w in _words(sub)]


def dag_dependencies(tmpl: dict, tpath: str) -> tuple[dict[str, list[str]], dict[str, tuple | None], list[str]]:
    """Per task of a DAG template: the tasks it waits for and its parsed depends logic; problems."""
    tasks = (tmpl.get("dag") or {}).get("tasks") or []
    names = [t.get("name") for t in tasks]
    deps: dict[str, list[str]] = {}
    logic: dict[str, tuple | None] = {}
    problems: list[str] = []
    for j, t in enumerate(tasks):
        path, name = f"{tpath}.dag.tasks[{j}]", t.get("name")
        if not name:
            problems.append(f"{path}.name: missing")
            continue
        if names.count(name) > 1 and names.index(name) != j:
            problems.append(f"{path}.name: task '{name}' is defined twice in this DAG")
        deps[name], logic[name] = [], None
        if "depends" in t and "dependencies" in t:
            problems.append(f"{path}: use either depends or dependencies, not both")
        if t.get("depends"):
            try:
                tree = parse_expression(str(t["depends"]))
                found = depends_tasks(tree)
            except ValueError as e:
                problems.append(f"{path}.depends: {e}")
                continue
            for w in _words(tree):
                if "." in w and w.rsplit(".", 1)[1] not in RESULTS:
                    problems.append(f"{path}.depends: unknown result in '{w}' (use one of {', '.join(RESULTS)})")
            deps[name], logic[name] = found, tree
        elif t.get("dependencies"):
            found = [str(d) for d in t["dependencies"]]
            deps[name] = found
            tree = ("word", found[0])
            for d in found[1:]:
                tree = ("and", tree, ("word", d))
            logic[name] = tree
        for d in deps[name]:
            if d not in names:
                field_name = "depends" if t.get("depends") else "dependencies"
                problems.append(f"{path}.{field_name}: unknown task '{d}' (tasks are {', '.join(map(str, names))})")
    # cycles: depth-first search over known names
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        state[n] = 1
        for d in deps.get(n, []):
            if d not in deps:
                continue
            if state.get(d) == 1:
                cycle = trail[trail.index(d):] + [d] if d in trail else [n, d]
                problems.append(f"{tpath}.dag.tasks: dependency cycle {' -> '.join(cycle)}")
            elif d not in state:
                visit(d, trail + [d])
        state[n] = 2

    for n in deps:
        if n not in state:
            visit(n, [n])
    return deps, logic, problems


def ancestors(deps: dict[str, list[str]], name: str) -> set[str]:
    """Every task `name` waits for, directly or transitively."""
    seen: set[str] = set()
    stack = list(deps.get(name, []))
    while stack:
        d = stack.pop()
        if d not in seen:
            seen.add(d)
            stack.extend(deps.get(d, []))
    return seen


# ---------------------------------------------------------------------------------------------
# The walker


@dataclass(frozen=True, eq=False)
class Template:
    """One mapping of spec.templates, with its index and field path."""

    index: int
    path: str  # spec.templates[i]
    body: dict

    @property
    def name(self) -> Any:
        return self.body.get("name")

    @property
    def is_dag(self) -> bool:
        return "dag" in self.body

    def inputs(self, kind: str) -> set:
        """Names of the declared inputs of `kind` ("parameters" or "artifacts")."""
        return _names((self.body.get("inputs") or {}).get(kind))

    def outputs(self, kind: str) -> set:
        """Names of the declared outputs of `kind` ("parameters" or "artifacts")."""
        return _names((self.body.get("outputs") or {}).get(kind))

    def containers(self) -> Iterator[tuple[str, dict]]:
        """Every container of the template's pod that a workflow writes (Argo adds init and wait)."""
        for key in ("container", "script"):
            if isinstance(self.body.get(key), dict):
                yield f"{self.path}.{key}", self.body[key]
        for k, c in enumerate((self.body.get("containerSet") or {}).get("containers") or []):
            yield f"{self.path}.containerSet.containers[{k}]", c
        for group in ("initContainers", "sidecars"):
            for k, c in enumerate(self.body.get(group) or []):
                yield f"{self.path}.{group}[{k}]", c

    def calls(self) -> Iterator[tuple[str, dict]]:
        """Every DAG task and step of the template, each of which calls a template."""
        for j, task in enumerate((self.body.get("dag") or {}).get("tasks") or []):
            yield f"{self.path}.dag.tasks[{j}]", task
        for j, group in enumerate(self.body.get("steps") or []):
            for k, step in enumerate(group if isinstance(group, list) else []):
                yield f"{self.path}.steps[{j}][{k}]", step


def _names(declared: Any) -> set:
    return {x.get("name") for x in declared or [] if isinstance(x, dict) and isinstance(x.get("name"), Hashable)}


@dataclass(frozen=True, eq=False)
class Task:
    """One task of a DAG template."""

    index: int
    path: str  # spec.templates[i].dag.tasks[j]
    body: dict
    dag: Template
    ancestors: frozenset  # every task it waits for: the only ones whose outputs it may use

    @property
    def name(self) -> Any:
        return self.body.get("name")

    @property
    def has_item(self) -> bool:
        """Whether it runs once per item, so `{{item}}` means something in it."""
        return any(k in self.body for k in LOOP_FIELDS)


@dataclass(frozen=True, eq=False)
class Use:
    """One `{{...}}` in a workflow spec, with the scope that decides what it may name."""

    path: str  # field path of the string that holds it
    name: str  # inside the braces, stripped
    tag: str  # as written, braces included
    template: Template | None  # None: in spec.arguments
    task: Task | None  # the DAG task whose arguments, when, withParam or withItems hold it

    @property
    def in_dag_scope(self) -> bool:
        """In a DAG template's tasks or outputs, where {{tasks.X...}} may appear."""
        return self.template is not None and self.template.is_dag

    @property
    def is_expression(self) -> bool:
        """An `{{=...}}` expression template, not a variable."""
        return self.name.startswith("=")


def spec_templates(spec: dict, sp: str = "spec") -> Iterator[Template]:
    """The mappings of spec.templates (anything else is the schema's to report), with their paths."""
    for i, t in enumerate(spec.get("templates") or []):
        if isinstance(t, dict):
            yield Template(i, f"{sp}.templates[{i}]", t)


class WorkflowRefs:
    """The templates, tasks, dependencies and variable uses of one workflow spec."""

    def __init__(self, spec: dict, sp: str = "spec") -> None:
        self.spec, self.sp = spec, sp
        self.templates = list(spec_templates(spec, sp))
        self.by_name = {t.name: t for t in self.templates if isinstance(t.name, Hashable)}
        self.parameters = [p.get("name") for p in (spec.get("arguments") or {}).get("parameters") or []]
        self._graphs: dict[int, tuple] = {}
        self._tasks: dict[int, list[Task]] = {}

    def graph(self, t: Template) -> tuple[dict[str, list[str]], dict[str, tuple | None], list[str]]:
        """dag_dependencies of a DAG template, computed once."""
        if t.index not in self._graphs:
            self._graphs[t.index] = dag_dependencies(t.body, t.path)
        return self._graphs[t.index]

    def tasks(self, t: Template) -> list[Task]:
        """The tasks of a DAG template that are mappings, with what each waits for."""
        if t.index not in self._tasks:
            deps = self.graph(t)[0]
            self._tasks[t.index] = [
                Task(j, f"{t.path}.dag.tasks[{j}]", task, t, frozenset(ancestors(deps, task.get("name"))))
                for j, task in enumerate((t.body.get("dag") or {}).get("tasks") or []) if isinstance(task, dict)]
        return self._tasks[t.index]

    def template_of(self, task: Task) -> Template | None:
        """The template a task runs, if there is one of that name."""
        name = task.body.get("template")
        return self.by_name.get(name) if isinstance(name, Hashable) else None

    def uses(self, skip: frozenset[str] = frozenset()) -> Iterator[Use]:
        """Every `{{...}}` Argo substitutes, in document order (see the methods below for each scope).

        `skip`: keys left out, at any depth, of non-DAG templates' own fields.
        """
        yield from self.argument_uses()
        for t in self.templates:
            yield from self.template_uses(t, skip)

    def argument_uses(self) -> Iterator[Use]:
        """In spec.arguments."""
        return _tags(self.spec.get("arguments"), f"{self.sp}.arguments", frozenset(), None, None)

    def template_uses(self, t: Template, skip: frozenset[str] = frozenset()) -> Iterator[Use]:
        """In a template: a non-DAG template's own fields (its name aside); a DAG's task fields and outputs.

        A DAG's other fields (task names, template names, depends) hold no variables.
        """
        if not t.is_dag:
            yield from _tags({k: v for k, v in t.body.items() if k != "name"}, t.path, skip, t, None)
            return
        for task in self.tasks(t):
            yield from self.task_uses(task)
        yield from self.output_uses(t)

    def task_uses(self, task: Task) -> Iterator[Use]:
        """In a DAG task's arguments, when, withParam and withItems."""
        for key in TASK_FIELDS:
            yield from _tags(task.body.get(key), f"{task.path}.{key}", frozenset(), task.dag, task)

    def output_uses(self, t: Template) -> Iterator[Use]:
        """In a DAG template's outputs (they name its tasks' outputs)."""
        return _tags(t.body.get("outputs"), f"{t.path}.outputs", frozenset(), t, None)


def _tags(value: Any, path: str, skip: frozenset[str], t: Template | None, task: Task | None) -> Iterator[Use]:
    for spath, text in iter_strings(value, path, skip):
        for m in TEMPLATE_TAG.finditer(text):
            yield Use(spath, m.group(1).strip(), m.group(0), t, task)
