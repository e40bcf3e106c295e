"""prunekit.device: reading the CPU's fields from /proc/cpuinfo; glibc keeping freed memory."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

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


_FAULTS = """
import ctypes, resource, sys
from prunekit.device import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(48 << 20)
    ctypes.memset(block, 1, 48 << 20)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, *faults)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_keep_freed_memory_reuses_a_large_block_instead_of_faulting_it_in_again():
    """A 48 MiB block written and freed, five times in a process: glibc unmaps it and each new
    one is page-faulted in again (12,288 pages of 4 KiB, fewer with huge pages); with freed
    memory kept, only the first one is."""
    def faults(mode: str) -> tuple[str, list[int]]:
        applied, *counts = subprocess.run([sys.executable, "-c", _FAULTS, mode],
                                          capture_output=True, text=True,
                                          check=True).stdout.split()
        return applied, [int(n) for n in counts]

    (applied_default, default), (applied, kept) = faults("default"), faults("keep")
    block = default[0]  # the faults of one block's pages, whatever the page size
    assert applied_default == "None" and block > 0
    assert all(n >= 0.9 * block for n in default), default
    assert applied == "True" and kept[0] >= 0.9 * block
    assert all(n <= block // 100 for n in kept[1:]), kept
