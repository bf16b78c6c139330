"""Programs as data: the invariants `Program` checks, and save/load, including a saved program
run by a fresh process that imports only `runtime`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from runtime import BufferSpec, CpuExecutor, Launch, Program, ProgramError, ProgramFormatError, load, load_executor

ROOT = Path(__file__).resolve().parents[2]


def test_save_load_round_trip(chain_program, tmp_path):
    path = tmp_path / "chain.kiln"
    chain_program.save(path)
    assert path.exists() and not (tmp_path / "chain.kiln.npz").exists()
    loaded = load(path)
    for field in ("name", "buffers", "inputs", "outputs", "launches", "arena_bytes", "code", "target"):
        assert getattr(loaded, field) == getattr(chain_program, field), field
    assert loaded.constants.keys() == chain_program.constants.keys()
    np.testing.assert_array_equal(loaded.constants[2], chain_program.constants[2])


def test_bfloat16_constants_keep_their_bits(tmp_path):
    bits = np.arange(12, dtype=np.uint16).reshape(3, 4) + 0x3F80
    constant = bits.view(ml_dtypes.bfloat16)
    program = Program(
        "bf16", (BufferSpec("w", "bfloat16", (3, 4), "constant"),), (), (0,), {0: constant}, (), 0, {"llvm_ir": ""}
    )
    program.save(tmp_path / "bf16.kiln")
    loaded = load(tmp_path / "bf16.kiln").constants[0]
    assert loaded.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(loaded.view(np.uint16), bits)


RUN_IN_FRESH_PROCESS = """
import json, sys
import numpy as np
import runtime
executor = runtime.load_executor(sys.argv[1], threads=2)
with np.load(sys.argv[2]) as data:
    (out,) = executor.run([data["x"], data["y"]])
np.save(sys.argv[3], out)
ours = sorted({name.split(".")[0] for name in sys.modules} & {"ir", "passes", "backends", "compiler"})
print(json.dumps(ours))
"""


def test_saved_program_runs_in_a_process_that_imports_only_runtime(
    chain_program, chain_inputs, chain_expected, tmp_path
):
    chain_program.save(tmp_path / "chain.kiln")
    x, y = chain_inputs
    np.savez(tmp_path / "inputs.npz", x=x, y=y)
    result = subprocess.run(
        [sys.executable, "-c", RUN_IN_FRESH_PROCESS, "chain.kiln", "inputs.npz", "out.npy"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    out = np.load(tmp_path / "out.npy")
    np.testing.assert_array_equal(out, CpuExecutor(chain_program, threads=1).run([x, y])[0])
    np.testing.assert_allclose(out, chain_expected(x, y, chain_program.constants[2]), rtol=1e-6)


def test_load_executor_runs(chain_program, chain_inputs, chain_expected, tmp_path):
    chain_program.save(tmp_path / "chain.kiln")
    (out,) = load_executor(tmp_path / "chain.kiln", threads=2).run(list(chain_inputs))
    np.testing.assert_allclose(out, chain_expected(*chain_inputs, chain_program.constants[2]), rtol=1e-6)


def test_unreadable_files_get_a_format_error(chain_program, tmp_path):
    (tmp_path / "text.kiln").write_text("not a program")
    (tmp_path / "empty.kiln").write_bytes(b"")
    chain_program.save(tmp_path / "whole.kiln")
    data = (tmp_path / "whole.kiln").read_bytes()
    (tmp_path / "truncated.kiln").write_bytes(data[: len(data) // 2])
    np.savez(tmp_path / "other.npz", header=np.frombuffer(b'{"format": "something else"}', dtype=np.uint8))
    for name in ("text.kiln", "empty.kiln", "truncated.kiln", "other.npz"):
        with pytest.raises(ProgramFormatError, match=name):
            load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.kiln")


F32 = "float32"
X = BufferSpec("x", F32, (4,), "input")
OUT = BufferSpec("out", F32, (4,), "output")
MALFORMED = [
    (dict(inputs=()), "inputs () are not the input buffers (0,)"),
    (dict(outputs=()), "output buffers ['out'] are not among the outputs"),
    (dict(outputs=(1, 5)), "output index 5 is out of range (2 buffers)"),
    (dict(launches=(Launch("k", (0, 2)),)), "launch 0 (k) takes buffer indices (0, 2), out of range"),
    (dict(buffers=(X, BufferSpec("out", "float12", (4,), "output"))), "unknown buffer dtype 'float12'"),
    (dict(buffers=(X, BufferSpec("out", F32, (4,), "scratch"))), "has kind 'scratch'"),
    (dict(buffers=(X, BufferSpec("t", F32, (4,), "intermediate", 0)), outputs=(1,)), "does not fit the 0-byte arena"),
    (dict(buffers=(X, BufferSpec("c", F32, (4,), "constant")), outputs=(1,)), "constants are given for buffers []"),
    (
        dict(buffers=(X, BufferSpec("c", F32, (4,), "constant")), outputs=(1,), constants={1: np.zeros(3, "f4")}),
        "constant c is float32[3], declared float32[4]",
    ),
]


@pytest.mark.parametrize(("change", "message"), MALFORMED)
def test_malformed_programs_are_rejected(change, message):
    fields = dict(
        name="p", buffers=(X, OUT), inputs=(0,), outputs=(1,), constants={}, launches=(), arena_bytes=0, code={}
    )
    with pytest.raises(ProgramError, match="program 'p' is malformed") as error:
        Program(**(fields | change))
    assert message in str(error.value)


def test_describe_lists_buffers_and_launches(chain_program):
    text = chain_program.describe()
    assert text.splitlines()[0].startswith("program chain (target cpu, arena ")
    assert "  %3 = intermediate t1: float32[1001] @0" in text
    assert "  launch mul(%3, %2, %4)" in text
    assert text.endswith("  return %6")
    assert repr(chain_program) == "<Program chain: 7 buffers, 5 launches, cpu>"
    assert dataclasses.replace(chain_program, name="other").name == "other"
