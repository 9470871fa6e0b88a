"""Summarise pytest's junit reports (``junit-*.xml`` in a folder) as Markdown.

Used by ``benchmarks/gpu_suite.sh``: counts of passed, failed, errors and skipped
tests over every report found, the slowest modules, and each failure or error with
the first line of its message.

Usage:
  python benchmarks/junit_summary.py DIR [--title TITLE]
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import xml.etree.ElementTree as ET


def summarise(folder: pathlib.Path, title: str) -> str:
  reports = sorted(folder.glob("junit-*.xml"))
  lines = [f"# {title}", ""]
  if not reports:
    return "\n".join(lines + [f"No junit report in {folder}: pytest did not finish.", ""])
  counts = collections.Counter()
  problems, seconds = [], collections.Counter()
  for report in reports:
    for case in ET.parse(report).getroot().iter("testcase"):
      if not case.get("name"):  # the entry pytest leaves for a test interrupted by the timeout
        counts["interrupted"] += 1
        continue
      name = f"{case.get('classname', '')}::{case.get('name', '')}"
      module = ".".join(case.get("classname", "").split(".")[:2])  # tests.test_x
      seconds[module] += float(case.get("time") or 0)
      outcome = "passed"
      for tag in ("failure", "error", "skipped"):
        child = case.find(tag)
        if child is not None:
          outcome = {"failure": "failed", "error": "errors"}.get(tag, tag)
          if tag != "skipped":
            message = (child.get("message") or child.text or "").strip().splitlines()
            problems.append((outcome, name, message[0][:200] if message else ""))
          break
      counts[outcome] += 1
  lines.append("Reports: " + ", ".join(r.name for r in reports))
  lines += ["", "| passed | failed | errors | skipped | interrupted |",
            "|---:|---:|---:|---:|---:|",
            f"| {counts['passed']} | {counts['failed']} | {counts['errors']} | "
            f"{counts['skipped']} | {counts['interrupted']} |", ""]
  if counts["interrupted"]:
    lines += ["The run was stopped before it finished (the time limit): the tests not "
              "counted here did not run.", ""]
  if problems:
    lines += ["| outcome | test | message |", "|---|---|---|"]
    lines += [f"| {o} | `{n}` | {m.replace('|', '/')} |" for o, n, m in problems]
    lines.append("")
  lines += ["Slowest modules (seconds, summed over their tests):", ""]
  lines += [f"- {name}: {s:.1f}" for name, s in seconds.most_common(8)]
  return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("folder", type=pathlib.Path, help="folder holding junit-*.xml")
  parser.add_argument("--title", default="Test suite", help="the Markdown title")
  args = parser.parse_args(argv)
  if not args.folder.is_dir():
    parser.error(f"not a folder: {args.folder}")
  sys.stdout.write(summarise(args.folder, args.title))
  return 0


if __name__ == "__main__":
  sys.exit(main())
