"""The seam holds: outside its package, nothing knows YOLOv3's internals, and the import
contracts in pyproject.toml (layers, the registry as the only way into a family, no cycles)
are kept."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "prunekit"
FAMILY = PACKAGE / "models" / "yolov3"
# YOLOv3's loss and decoder, its anchors and letterbox geometry, its state-dict names.
# (`export --decode` is every family's option, not YOLOv3's decoder.)
YOLO_INTERNALS = re.compile(r"yolo_loss|(?<!--)\bdecode\b|(?i:anchor|letterbox)|layers\.(\{|\d)")
# Another family's package has state-dict names of its own (HF's "layers.{i}"), but no YOLO.
IN_OTHER_FAMILIES = re.compile(r"yolo|(?<!--)\bdecode\b|(?i:anchor|letterbox)")


def test_nothing_outside_the_yolov3_package_names_its_internals():
    others = [p for p in (PACKAGE / "models").iterdir()
              if p.is_dir() and (p / "__init__.py").exists() and p != FAMILY]
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if FAMILY in path.parents:
            continue
        pattern = IN_OTHER_FAMILIES if any(o in path.parents for o in others) \
            else YOLO_INTERNALS
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_grep_would_catch_a_leak():
    assert YOLO_INTERNALS.search("anchors = [h.anchors for h in model.heads()]")
    assert YOLO_INTERNALS.search('w = state[f"layers.{i}.conv.weight"]')
    assert YOLO_INTERNALS.search("boxes = model.decode(outputs)")
    assert not YOLO_INTERNALS.search("found = model.postprocess(outputs, geometries)")
    assert not YOLO_INTERNALS.search("prunekit export pruned.st -o pruned.onnx --decode")


def test_import_contracts_are_kept():
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        found = shutil.which("lint-imports")
        if found is None:
            pytest.skip("import-linter is not installed (it is in the dev extras)")
        exe = Path(found)
    result = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


def test_no_library_function_takes_more_than_twelve_parameters():
    """Settings travel as configuration values (TrainConfig, AttackConfig, PruneConfig,
    ScoreConfig, the grid's Measure), not as loose keyword arguments: outside the command line,
    no function or method takes more than 12 parameters (self and cls not counted)."""
    import ast

    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "cli") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                count = len([n for n in names if n not in ("self", "cls")]) \
                    + (a.vararg is not None) + (a.kwarg is not None)
                if count > 12:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {count}")
    assert not found, "\n".join(found)
