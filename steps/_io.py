"""Artifact I/O shared by every step: atomic writes, self-describing output folders,
row-level JSONL checkpoints and progress for `$ARGO_PROGRESS_FILE`.

Kept dependency-free (stdlib only) so `--help` and the workflow compiler stay fast.
"""

from __future__ import annotations

import contextlib
import csv
import io
import hashlib
import json
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

MANIFEST = "manifest.json"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    A reader therefore sees either the previous complete output or the new complete one,
    never a half-written file or folder (the rename is atomic on one filesystem).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    _remove(tmp)
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if is_dir and path.exists():
        # a folder cannot be renamed over a non-empty folder: move the old one aside first
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        _remove(old)
        path.rename(old)
        tmp.rename(path)
        _remove(old)
    else:
        os.replace(tmp, path)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a complete JSONL file; a malformed line is an error naming file and line."""
    rows = []
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {i} is not valid JSON ({e.msg})") from e
    return rows


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def write_manifest(
    folder: str | Path,
    step: str,
    config: Any,
    counts: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    packages: Iterable[str] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Describe an output folder: the config that made it, counts, versions, file hashes, timings."""
    folder = Path(folder)
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST and p.stat().st_size < 2_000_000_000:
            files[str(p.relative_to(folder))] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    cfg = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    doc = {
        "step": step,
        "created_unix": time.time(),
        "config": cfg,
        "counts": counts or {},
        "timings_s": timings or {},
        "versions": package_versions(packages),
        "files": files,
    }
    if extra:
        doc.update(extra)
    return write_json(folder / MANIFEST, doc)


def write_metrics(folder: str | Path | None, values: dict[str, Any]) -> None:
    """One small file per value (`rows`, `failed`, ...): Argo reads them as output parameters,
    which feed the templates' Prometheus metrics. No folder configured: nothing to do."""
    if not folder:
        return
    for name, value in values.items():
        write_text(Path(folder) / name, "" if value is None else f"{value}")


def begin_output(folder: str | Path) -> Path:
    """Open a step's output folder for (re)work: it is incomplete until manifest.json is written
    again, so a stale manifest from an earlier run is removed first. Row logs inside are kept."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    return out


class JsonlLog:
    """Append-only, row-keyed progress log. A restarted step skips keys already in the log.

    A torn last line (the process was killed mid-write) is ignored, so the row is redone
    rather than lost or duplicated.
    """

    def __init__(self, path: str | Path, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self.rows: dict[str, dict] = {}
        if self.path.exists():
            # Read bytes and trust only newline-terminated lines: a kill can tear the last line
            # anywhere, even inside a UTF-8 character or just before its newline. That tail is
            # cut off the file too, so what the log holds in memory is exactly what is on disk.
            data = self.path.read_bytes()
            complete = data.rfind(b"\n") + 1
            for line in data[:complete].splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # JSONDecodeError or UnicodeDecodeError
                    continue
                self.rows[str(row[key])] = row
            if complete < len(data):
                with self.path.open("r+b") as f:
                    f.truncate(complete)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def __contains__(self, key: object) -> bool:
        return str(key) in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, row: dict) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.rows[str(row[self.key])] = row

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Progress:
    """Progress as Argo reads it: `N/M` in the file named by $ARGO_PROGRESS_FILE, plus a
    terse line on stderr at most every `every_s` seconds (container logs)."""

    def __init__(self, total: int, label: str, every_s: float = 5.0):
        self.total = max(int(total), 1)
        self.done = 0
        self.label = label
        self.every_s = every_s
        self._last = 0.0
        self._t0 = time.monotonic()
        self._file = os.environ.get("ARGO_PROGRESS_FILE")
        self._write()

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._write()

    def set(self, done: int) -> None:
        self.done = done
        self._write()

    def _write(self) -> None:
        if self._file:
            try:
                Path(self._file).write_text(f"{min(self.done, self.total)}/{self.total}\n")
            except OSError:
                pass  # progress is advisory; never fail a step over it
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            rate = self.done / max(now - self._t0, 1e-9)
            print(f"[{self.label}] {self.done}/{self.total} ({rate:.2f}/s)", file=sys.stderr, flush=True)


def to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """CSV text (RFC 4180 quoting) of rows; values that are lists or mappings are written as JSON."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\r\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: (json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else
                        "" if v is None else v) for c, v in r.items() if c in columns})
    return buf.getvalue()


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    """Write rows as CSV atomically; columns default to every key in first-seen order."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    return write_text(path, to_csv(columns, rows))


def read_yaml_mapping(path: str | Path, what: str, empty_ok: bool = False) -> dict:
    """A YAML file that must hold a mapping, e.g. a study or a step config. Errors name the file and
    say what `what` (e.g. "study file") should be: FileNotFoundError, or ValueError."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what} {path} does not exist") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{what} {path} is not valid YAML{where}: {problem}; fix the file "
                         "(quote text that holds ':' '{' or '#')") from e
    if doc is None and empty_ok:
        return {}
    if not isinstance(doc, dict):
        raise ValueError(f"{what} {path} must hold a mapping")
    return doc
