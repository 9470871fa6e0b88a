"""Run directories never overwrite; JSON has no NaN."""

import json
import math

import pytest

from weightax import runs
from weightax.runs import check_out, new_run_dir, write_json


def test_new_run_dirs_are_distinct(tmp_path):
  a = new_run_dir("s", root=tmp_path)
  b = new_run_dir("s", root=tmp_path)
  assert a != b and a.parent == b.parent == tmp_path / "s"


def test_out_must_be_empty(tmp_path):
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "f").write_text("1")
  with pytest.raises(FileExistsError, match="already holds files"):
    new_run_dir("s", tmp_path / "x")


def test_out_that_is_a_file_is_refused_with_what_to_do(tmp_path):
  (tmp_path / "f").write_text("1")
  with pytest.raises(FileExistsError, match="is a file, not a directory; choose a new"):
    new_run_dir("s", tmp_path / "f")
  assert (tmp_path / "f").read_text() == "1"


def test_check_out_creates_nothing(tmp_path):
  assert check_out(tmp_path / "a" / "b") == tmp_path / "a" / "b"
  assert not (tmp_path / "a").exists()
  (tmp_path / "e").mkdir()
  assert check_out(tmp_path / "e") == tmp_path / "e"  # an empty directory is fine
  (tmp_path / "e" / "f").write_text("1")
  with pytest.raises(FileExistsError, match="already holds files; choose a new directory"):
    check_out(tmp_path / "e")


def test_write_json_nan_becomes_null(tmp_path):
  write_json(tmp_path / "a.json", {"a": math.nan, "b": [1.0, math.inf]})
  assert json.loads((tmp_path / "a.json").read_text()) == {"a": None, "b": [1.0, None]}


def test_run_dir_removes_only_an_empty_directory_it_created(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    with runs.run_dir("study", root=tmp_path) as out:
      raise KeyboardInterrupt
  assert not out.exists()  # created here, nothing written: removed
  with pytest.raises(RuntimeError):
    with runs.run_dir("study", root=tmp_path) as out:
      (out / "partial.csv").write_text("x")
      raise RuntimeError
  assert (out / "partial.csv").exists()  # something written: kept
  given = tmp_path / "given"
  given.mkdir()
  with pytest.raises(RuntimeError):
    with runs.run_dir("study", given):
      raise RuntimeError
  assert given.is_dir()  # the user's own empty --out directory is left alone
