"""Run directories never overwrite; JSON has no NaN."""

import json
import math

import pytest

from weightax.runs import new_run_dir, write_json


def test_new_run_dirs_are_distinct(tmp_path):
  a = new_run_dir("s", root=tmp_path)
  b = new_run_dir("s", root=tmp_path)
  assert a != b and a.parent == b.parent == tmp_path / "s"


def test_out_must_be_empty(tmp_path):
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "f").write_text("1")
  with pytest.raises(FileExistsError, match="already holds files"):
    new_run_dir("s", tmp_path / "x")


def test_write_json_nan_becomes_null(tmp_path):
  write_json(tmp_path / "a.json", {"a": math.nan, "b": [1.0, math.inf]})
  assert json.loads((tmp_path / "a.json").read_text()) == {"a": None, "b": [1.0, None]}
