"""prunekit.device: reading the CPU's fields from /proc/cpuinfo."""

from __future__ import annotations

from pathlib import Path

from prunekit import device


def test_cpu_info_reads_the_first_line_of_each_field(tmp_path, monkeypatch):
    (tmp_path / "cpuinfo").write_text(
        "processor\t: 0\nmodel name\t: Some CPU @ 3.0GHz\nmodel\t\t: 167\n"
        "flags\t\t: fpu avx2 fma\n\n"
        "processor\t: 1\nmodel name\t: Some CPU @ 3.0GHz\nflags\t\t: fpu avx2 fma\n")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: real(
        tmp_path / "cpuinfo" if str(self) == "/proc/cpuinfo" else self, *a, **k))
    assert device.cpu_info("model name", "flags", "Features", "model") == {
        "model name": "Some CPU @ 3.0GHz", "flags": "fpu avx2 fma", "Features": "",
        "model": "167"}  # the whole name: "model" is not the "model name" line before it


def test_cpu_info_without_proc_cpuinfo(monkeypatch):
    def missing(self, *a, **k):
        raise FileNotFoundError(str(self))

    monkeypatch.setattr(Path, "read_text", missing)
    assert device.cpu_info("flags") is None
