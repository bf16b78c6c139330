"""The compiled-object cache on disk: a second compile of the same IR reuses the object; a
corrupt entry is ignored and rebuilt; KILN_CACHE_DIR=off keeps nothing."""

import hashlib

import pytest

from runtime import cpu
from runtime.disk_cache import CACHE_ENVIRONMENT_VARIABLE


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENVIRONMENT_VARIABLE, str(tmp_path))
    monkeypatch.setattr(cpu, "_OBJECT_CACHE", {})
    return tmp_path


@pytest.fixture
def compile_kernel(kernels):
    """Compile a small kernel (the hand-written IR of tests/runtime/conftest.py)."""
    return lambda name="add_cached": cpu.compile_llvm_ir(kernels.cpu_code(kernels.binary(name, "fadd", 64)))


def test_a_compiled_object_is_kept_on_disk_and_reused(cache, monkeypatch, compile_kernel):
    compile_kernel()
    (entry,) = cache.glob("*.o")
    content = entry.read_bytes()
    assert hashlib.sha256(content[32:]).digest() == content[:32]
    monkeypatch.setattr(cpu, "_OBJECT_CACHE", {})  # a new process: only the disk remembers
    engine = compile_kernel()
    assert engine.get_function_address("add_cached") != 0
    assert cpu._OBJECT_CACHE  # read back from disk
    assert entry.read_bytes() == content


def test_a_corrupt_entry_is_ignored_and_rebuilt(cache, monkeypatch, compile_kernel):
    compile_kernel()
    (entry,) = cache.glob("*.o")
    good = entry.read_bytes()
    entry.write_bytes(good[: len(good) // 2])  # truncated
    monkeypatch.setattr(cpu, "_OBJECT_CACHE", {})
    engine = compile_kernel()
    assert engine.get_function_address("add_cached") != 0
    assert entry.read_bytes() == good


def test_off_keeps_nothing(tmp_path, monkeypatch, compile_kernel):
    monkeypatch.setenv(CACHE_ENVIRONMENT_VARIABLE, "off")
    monkeypatch.setattr(cpu, "_OBJECT_CACHE", {})
    monkeypatch.chdir(tmp_path)
    compile_kernel("add_uncached")
    assert not list(tmp_path.rglob("*.o"))
