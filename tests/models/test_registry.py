"""Families are plugins: found through the entry-point group `prunekit.families`, each declaring
its own `init` and `export` options; an uninstalled family is refused by name, and a clash
between installed families is refused before any command runs, in one line naming both."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from prunekit import checkpoint
from prunekit.cli import app
from prunekit.errors import ModelError, PrunekitError
from prunekit.init import init
from prunekit.models import registry
from tests.conftest import ROOT, tiny_checkpoint


def test_prunekit_registers_its_own_families_as_entry_points():
    from importlib import metadata

    points = {p.name: p.value for p in metadata.entry_points(group=registry.GROUP)}
    assert points["yolov3"] == "prunekit.models.yolov3:FAMILY"
    assert points["deformable-detr"] == "prunekit.models.deformable_detr:FAMILY"
    # the example plugin, installed by `make install` as a separate package
    assert points.get("retinanet") == "prunekit_retinanet:FAMILY", \
        "examples/family-plugin is not installed: run `make install`"


def test_the_command_line_builds_each_familys_options_grouped_in_help(runner):
    for command, family, flag in [("init", "yolov3", "--width"), ("init", "yolov3", "--cfg"),
                                  ("init", "deformable-detr", "--hf"),
                                  ("init", "retinanet", "--fpn-channels"),
                                  ("export", "deformable-detr", "--hf"),
                                  ("export", "retinanet", "--torchvision")]:
        text = runner.invoke(app, [command, "--help"]).stdout
        section = text.index(f"Options of the {family} family:")
        end = text.find("Options of the", section + 1)
        assert flag in text[section:end if end > 0 else None], (command, family, flag)


@pytest.mark.parametrize(("argv", "message"), [
    (["init", "deformable-detr-small", "--classes", "3", "--width", "0.5"],
     "--width is an option of the yolov3 family; deformable-detr-small is a deformable-detr "
     "member"),
    (["init", "--cfg", "a.cfg", "--hf", "b"], "options of different model families"),
    (["init", "yolov3-small", "--classes", "3", "--hf", "b"], "not both or neither"),
])
def test_an_option_given_to_another_family_is_refused_in_one_line(runner, argv, message):
    result = runner.invoke(app, argv)
    assert result.exit_code == 1 and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_another_familys_export_format_is_refused(runner, tmp_path):
    path = tmp_path / "y.st"
    checkpoint.save(tiny_checkpoint(), path)
    result = runner.invoke(app, ["export", str(path), "--hf", str(tmp_path / "out")])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "yolov3 model, which exports to ONNX only; --hf is another family's format" \
        in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture
def without_detr(monkeypatch):
    """Deformable DETR's entry point removed, as if its package were uninstalled."""
    points = [p for p in registry._entry_points() if p.name != "deformable-detr"]
    monkeypatch.setattr(registry, "_entry_points", lambda: points)
    registry.reset()
    yield
    monkeypatch.undo()
    registry.reset()


@pytest.fixture
def detr_bytes():
    return checkpoint.to_bytes(init("deformable-detr-small", classes=3, img_size=64))


def test_removing_an_entry_point_removes_the_family_cleanly(detr_bytes, without_detr, runner):
    assert "deformable-detr" not in registry.names() and "yolov3" in registry.names()
    with pytest.raises(ModelError, match="unknown architecture 'deformable-detr-small'.*"
                                         "installed families: retinanet, yolov3"):
        init("deformable-detr-small", classes=3)
    result = runner.invoke(app, ["init", "deformable-detr-small", "--classes", "3"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "installed families: retinanet, yolov3" in result.stderr
    # a checkpoint of the removed family names it and what is installed
    with pytest.raises(PrunekitError, match=r"holds a 'deformable-detr' model, a family that "
                                            r"is not installed \(installed: retinanet, yolov3\)"):
        checkpoint.from_bytes(detr_bytes, "detr.st")
    # its options are refused by name, and the other families work as before
    result = runner.invoke(app, ["init", "--hf", "folder"])
    assert result.exit_code == 1 and "no installed model family has the init option --hf" \
        in result.stderr
    assert init("yolov3-small", classes=3, img_size=64, options={"width": 0.125}).family == \
        "yolov3"


def _plugin(root, package: str, family: str, options: str) -> None:
    """A family package installed by its metadata alone (a .dist-info folder on the path)."""
    (root / f"{package}.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        from prunekit.models import Family, Option

        class _Family(Family):
            name = {family!r}
            members = ({family + "-small"!r},)
            init_options = {options}

            def build(self, arch, input_spec, classes):
                raise NotImplementedError

            def create(self, member, classes, **kw):
                raise NotImplementedError

            def input_spec(self, spec=None, **kw):
                return {{}}

        FAMILY = _Family()
    """))
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[prunekit.families]\n{family} = {package}:FAMILY\n")


def _prunekit(root, *argv: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": f"{root}:{ROOT}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "prunekit", *argv], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.slow
def test_two_plugins_claiming_one_option_are_refused_at_start_up(tmp_path):
    _plugin(tmp_path, "alpha_family", "alpha", '(Option("anchors", Path, "Alpha anchors."),)')
    _plugin(tmp_path, "beta_family", "beta", '(Option("anchors", Path, "Beta anchors."),)')
    for argv in (["init", "--help"], ["data", "synth", str(tmp_path / "d"), "--train", "1"]):
        result = _prunekit(tmp_path, *argv)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "'alpha' (package alpha_family)" in lines[0]
        assert "'beta' (package beta_family)" in lines[0]
        assert "--anchors" in lines[0]
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_a_plugin_claiming_a_commands_own_option_is_refused(tmp_path):
    _plugin(tmp_path, "gamma_family", "gamma", '(Option("seed", int, "A seed."),)')
    result = _prunekit(tmp_path, "init", "yolov3-small", "--classes", "3")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "'gamma' declares the init option --seed, which `prunekit init` has itself" \
        in result.stderr


def test_an_entry_point_must_load_its_own_family(monkeypatch):
    from importlib.metadata import EntryPoint

    wrong = EntryPoint("yolo", "prunekit.models.yolov3:FAMILY", registry.GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda: [wrong])
    registry.reset()
    try:
        with pytest.raises(ModelError, match="loads the family 'yolov3'; name the entry point "
                                             "after its family"):
            registry.get("yolo")
    finally:
        monkeypatch.undo()
        registry.reset()
