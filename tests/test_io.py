"""steps._io: atomic outputs, the write-ahead JSONL log, manifests, read_jsonl errors, progress."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from steps._io import (
    JsonlLog,
    Progress,
    atomic_path,
    read_jsonl,
    write_json,
    write_jsonl,
    write_manifest,
    write_text,
)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


class Boom(Exception):
    pass


# ---- atomic_path ---------------------------------------------------------------------------------

def test_atomic_file_failure_keeps_old_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "answers.jsonl"
    target.write_text("old\n")
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            assert not target.read_text().startswith("half")  # invisible until the block succeeds
            raise Boom
    assert target.read_text() == "old\n"
    assert listing(tmp_path) == ["answers.jsonl"]


def test_atomic_file_success_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two"
    assert listing(tmp_path) == ["a", "a/b", "a/b/out.txt"]


def test_atomic_file_failure_without_old_file_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        with atomic_path(tmp_path / "new.json") as tmp:
            tmp.write_text("{")
            raise Boom
    assert listing(tmp_path) == []


def test_atomic_dir_failure_keeps_old_folder(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with pytest.raises(Boom):
        with atomic_path(target, is_dir=True) as tmp:
            assert tmp.is_dir() and tmp != target
            (tmp / "new.bin").write_text("partial")
            raise Boom
    assert listing(tmp_path) == ["adapter", "adapter/old.bin"]


def test_atomic_dir_success_replaces_whole_folder(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "new.bin").write_text("new")
    assert listing(tmp_path) == ["adapter", "adapter/sub", "adapter/sub/new.bin"]  # no .old-/.tmp- left
    with atomic_path(tmp_path / "fresh", is_dir=True) as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "fresh" / "x").read_text() == "x"


def test_write_json_and_jsonl_roundtrip(tmp_path):
    rows = [{"id": "1", "q": "¿qué?"}, {"id": "2", "q": "日本"}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    assert "¿qué?" in (tmp_path / "r.jsonl").read_text(encoding="utf-8")  # readable, not \u-escaped
    assert read_jsonl(tmp_path / "r.jsonl") == rows
    write_json(tmp_path / "d.json", {"a": Path("x")})
    assert json.loads((tmp_path / "d.json").read_text()) == {"a": "x"}


# ---- read_jsonl ----------------------------------------------------------------------------------

def test_read_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"id": 1}\n\n{"id": 2}\n{"id": 3\n{"id": 4}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl: line 4 is not valid JSON") as e:
        read_jsonl(p)
    assert str(p) in str(e.value)
    assert isinstance(e.value.__cause__, json.JSONDecodeError)


def test_read_jsonl_skips_blank_lines(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('\n{"id": 1}\n   \n{"id": 2}')
    assert read_jsonl(p) == [{"id": 1}, {"id": 2}]


# ---- JsonlLog ------------------------------------------------------------------------------------

def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().decode("utf-8").splitlines()]


def test_log_appends_and_reloads_keyed(tmp_path):
    p = tmp_path / "log.jsonl"
    with JsonlLog(p) as log:
        log.append({"id": 1, "answer": None, "error": "HTTP 500"})
        log.append({"id": 2, "answer": "b", "error": None})
        log.append({"id": 1, "answer": "a", "error": None})  # a retried row: the later line wins
    log = JsonlLog(p)
    assert len(log) == 2 and 1 in log and "1" in log and "3" not in log
    assert log.rows["1"]["answer"] == "a"
    log.close()


def test_log_custom_key(tmp_path):
    with JsonlLog(tmp_path / "log.jsonl", key="name") as log:
        log.append({"name": "x", "v": 1})
    with JsonlLog(tmp_path / "log.jsonl", key="name") as log:
        assert log.rows == {"x": {"name": "x", "v": 1}}


@pytest.mark.parametrize("tail", [
    b'{"id": "3", "answer": "par',                                # killed mid-row
    '{"id": "3", "answer": "caf\u00e9"}'.encode()[:-3],            # killed inside a UTF-8 character
    b'{"id": "3", "answer": "c", "error": null}',                 # killed before the newline
], ids=["partial-json", "split-utf8", "no-newline"])
def test_log_torn_tail_is_dropped_and_truncated(tmp_path, tail):
    p = tmp_path / "log.jsonl"
    with JsonlLog(p) as log:
        log.append({"id": "1", "answer": "é", "error": None})
        log.append({"id": "2", "answer": "b", "error": None})
    good = p.read_bytes()
    p.write_bytes(good + tail)
    with JsonlLog(p) as log:
        assert sorted(log.rows) == ["1", "2"]  # the torn row is redone, never half-trusted
        assert p.read_bytes() == good          # and the torn bytes are gone from the file
        log.append({"id": "3", "answer": "c", "error": None})
    assert [r["id"] for r in log_lines(p)] == ["1", "2", "3"]
    with JsonlLog(p) as log:  # what the log believes always matches what is on disk
        assert sorted(log.rows) == ["1", "2", "3"]


def test_log_survives_repeated_reopen_without_growth(tmp_path):
    p = tmp_path / "log.jsonl"
    with JsonlLog(p) as log:
        log.append({"id": "1"})
    for _ in range(3):
        JsonlLog(p).close()
    assert p.read_text() == '{"id": "1"}\n'


# ---- write_manifest ------------------------------------------------------------------------------

class Cfg(BaseModel):
    out: Path
    temperature: float = 0.0


def test_manifest_describes_the_folder(tmp_path):
    folder = tmp_path / "out"
    write_jsonl(folder / "answers.jsonl", [{"id": 1}])
    write_text(folder / "sub" / "notes.txt", "hi")
    path = write_manifest(folder, "query", Cfg(out=folder), counts={"rows": 1}, timings={"wall": 1.5},
                          packages=["httpx", "surely-not-installed-pkg"], extra={"endpoint": "http://x/v1"})
    assert path == folder / "manifest.json"
    doc = json.loads(path.read_text())
    assert doc["step"] == "query"
    assert doc["config"] == {"out": str(folder), "temperature": 0.0}
    assert doc["counts"] == {"rows": 1} and doc["timings_s"] == {"wall": 1.5}
    assert doc["endpoint"] == "http://x/v1"
    assert doc["versions"]["python"] and doc["versions"]["httpx"]
    assert doc["versions"]["surely-not-installed-pkg"] is None
    assert set(doc["files"]) == {"answers.jsonl", "sub/notes.txt"}  # not itself
    for name, info in doc["files"].items():
        data = (folder / name).read_bytes()
        assert info == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    write_manifest(folder, "query", {"plain": "dict"})  # rewriting: still not listed in itself
    doc = json.loads(path.read_text())
    assert doc["config"] == {"plain": "dict"} and "manifest.json" not in doc["files"]


# ---- Progress ------------------------------------------------------------------------------------

def test_progress_writes_n_of_m(tmp_path, monkeypatch):
    f = tmp_path / "progress"
    monkeypatch.setenv("ARGO_PROGRESS_FILE", str(f))
    p = Progress(4, "t")
    assert f.read_text() == "0/4\n"
    p.advance()
    p.advance(2)
    assert f.read_text() == "3/4\n"
    p.set(9)
    assert f.read_text() == "4/4\n"  # never more than the total
    Progress(0, "empty")
    assert f.read_text() == "0/1\n"


def test_progress_never_fails_the_step(tmp_path, monkeypatch):
    monkeypatch.setenv("ARGO_PROGRESS_FILE", str(tmp_path / "no" / "such" / "dir" / "progress"))
    Progress(2, "t").advance()
    monkeypatch.delenv("ARGO_PROGRESS_FILE")
    Progress(2, "t").advance()


def test_yaml_mapping_errors_name_the_file(tmp_path):
    from steps._cli import load_config
    from steps._io import read_yaml_mapping

    class Cfg(BaseModel):
        n: int = 1

    missing, bad, listy, empty, good = (tmp_path / f for f in ("no.yaml", "bad.yaml", "list.yaml", "empty.yaml", "ok.yaml"))
    bad.write_text("n: [1,\n")
    listy.write_text("- 1\n")
    empty.write_text("")
    good.write_text("n: 3\n")
    with pytest.raises(FileNotFoundError, match=r"study file .*no\.yaml does not exist"):
        read_yaml_mapping(missing, "study file")
    with pytest.raises(ValueError, match=r"study file .*bad\.yaml is not valid YAML"):
        read_yaml_mapping(bad, "study file")
    with pytest.raises(ValueError, match=r"study file .*list\.yaml must hold a mapping"):
        read_yaml_mapping(listy, "study file")
    with pytest.raises(ValueError, match=r"empty\.yaml must hold a mapping"):
        read_yaml_mapping(empty, "study file")
    # a step's --config: the same checks, as the CLI's exit message; an empty file is no settings
    for path, match in ((missing, r"Cfg config file .*no\.yaml does not exist"),
                        (bad, r"Cfg config file .*bad\.yaml is not valid YAML"),
                        (listy, r"Cfg config file .*list\.yaml must hold a mapping")):
        with pytest.raises(SystemExit, match=match):
            load_config(Cfg, str(path))
    assert load_config(Cfg, str(empty)).n == 1
    assert load_config(Cfg, str(good)).n == 3
