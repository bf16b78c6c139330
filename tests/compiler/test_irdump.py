"""`irdump FILE.kiln`: verifies and prints a text-form graph with a summary."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import ir
from compiler.irdump import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mlp.kiln"


def test_prints_a_parsed_file_identical_to_its_normalised_input(tmp_path, capsys):
    text = EXAMPLE.read_text()
    assert main([str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    graph_text, summary = out.rsplit("\n# ", 1)
    assert graph_text.strip() == ir.print_graph(ir.parse_graph(text)).strip()
    assert "nodes" in summary and "FLOPs" in summary and "constants" in summary
    # The printed graph is itself a valid input, printed identically (the normal form is a fixpoint).
    again = tmp_path / "again.kiln"
    again.write_text(out)
    assert main([str(again)]) == 0
    assert capsys.readouterr().out == out


def test_unnormalised_input_is_normalised(tmp_path, capsys):
    path = tmp_path / "messy.kiln"
    path.write_text(
        "graph @g(%x: f32[2]) -> (f32[2]) {\n"
        "  %a = const @c : f32[2]\n"
        "  %y =   relu(%x) {}   : f32[2]  # from a.py:1\n"
        "  %z = add(%y, %a) : f32[2]\n"
        "  return %z\n}\nconstants { @c : f32[2] = [1, 2.50] }\n"
    )
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "  %0 = relu(%x) : f32[2]    # from a.py:1\n" in out
    assert "@c : f32[2] = [1.0, 2.5]" in out


def test_summary_counts(capsys):
    assert main([str(EXAMPLE), "--summary-only"]) == 0
    summary = capsys.readouterr().out
    graph = ir.parse_graph(EXAMPLE.read_text())
    constant_bytes = sum(a.nbytes for a in graph.constants.values())
    assert summary.startswith(f"# {len(graph.nodes)} nodes (")
    assert f"{len(graph.constants)} constants" in summary
    assert constant_bytes > 0 and np.isfinite(constant_bytes)


def test_errors_exit_non_zero_with_the_location(tmp_path, capsys):
    path = tmp_path / "bad.kiln"
    path.write_text("graph @g(%x: f32[2]) -> (f32[2]) {\n  %0 = relu(%y) : f32[2]\n  return %0\n}\n")
    assert main([str(path)]) == 1
    err = capsys.readouterr().err
    assert "line 2, column 13: %y is used before it is defined" in err
    assert main([str(tmp_path / "missing.kiln")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main([str(tmp_path / "model.onnx")]) == 2


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "compiler.irdump", str(EXAMPLE), "--summary-only"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# ")


DEAD_CODE = """\
graph @g(%x: f32[2]) -> (f32[2]) {
  %0 = exp(%x) : f32[2]
  %1 = relu(%x) : f32[2]
  return %1
}
"""


def test_passes_run_and_each_gets_a_summary_line(tmp_path, capsys):
    path = tmp_path / "dead.kiln"
    path.write_text(DEAD_CODE)
    assert main([str(path), "--passes", "prune_dead_nodes", "--print-after-all"]) == 0
    out = capsys.readouterr().out
    assert out.count("# IR after pass 1: prune_dead_nodes\n") == 1
    final = out.split("# IR after pass 1: prune_dead_nodes\n")[1]
    assert "exp" not in final
    assert "# prune_dead_nodes" in out and "nodes     2 -> 1" in out


def test_print_after_names_one_pass_and_o_levels_run_the_default_pipeline(tmp_path, capsys):
    path = tmp_path / "dead.kiln"
    path.write_text(DEAD_CODE)
    assert main([str(path), "-O1", "--print-after", "prune_dead_nodes", "--summary-only"]) == 0
    out = capsys.readouterr().out
    assert "# IR after pass" in out and ": prune_dead_nodes\n" in out
    assert "graph @g" in out  # printed after the named pass only, final IR suppressed
    assert main([str(path), "-O0", "--summary-only"]) == 0
    assert "prune_dead_nodes" not in capsys.readouterr().out


def test_a_bad_pipeline_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "dead.kiln"
    path.write_text(DEAD_CODE)
    assert main([str(path), "--passes", "no_such_pass"]) == 2
    assert "unknown pass 'no_such_pass'" in capsys.readouterr().err


FACTORY = """\
import torch


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.relu(self.linear(x))


def make():
    torch.manual_seed(0)
    return Block().eval(), (torch.randn(2, 4),)
"""


def test_a_python_factory_prints_the_imported_torch_model(tmp_path, capsys):
    path = tmp_path / "block.py"
    path.write_text(FACTORY)
    assert main([f"{path}:make", "-O2"]) == 0
    out = capsys.readouterr().out
    assert "graph @" in out and "fused(" in out and "gemm(" in out and "relu(" in out
    assert "# fuse" in out
    assert main([f"{path}:missing"]) == 2
    assert "has no function missing()" in capsys.readouterr().err


def test_an_onnx_file_prints_its_imported_graph(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu_0"), helper.make_node("Neg", ["r"], ["y"], name="neg_0")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "relu(%x) : f32[2,3]" in out and "neg(" in out and "# relu_0" in out


def test_emit_prints_each_kernel_as_kernel_ir_llvm_and_assembly(capsys):
    assert main([str(EXAMPLE), "-O2", "--target", "cpu", "--emit", "loop"]) == 0
    loop = capsys.readouterr().out
    assert loop.count("kernel k") == 4 and "parallel for" in loop and "tanh(" in loop
    assert main([str(EXAMPLE), "-O2", "--target", "cpu", "--emit", "llvm"]) == 0
    llvm = capsys.readouterr().out
    assert 'define void @"k0_fused_0_gemm_gelu"(ptr %"args", i64 %"worker", i64 %"workers")' in llvm
    assert main([str(EXAMPLE), "--target", "cpu", "--emit", "asm"]) == 0  # fuses on its own without -O
    assert "k0_fused_0" in capsys.readouterr().out
    assert main([str(EXAMPLE), "--emit", "loop"]) == 2
    assert "--emit needs --target cpu" in capsys.readouterr().err


# -- --target cuda --emulate: the generated CUDA C run in the emulator ------------------------------


def _needs_nvrtc_and_gxx():
    import pytest

    from backends.cuda import missing_nvrtc
    from runtime.cuda_emulator import emulator_unavailable

    for missing in (missing_nvrtc(), emulator_unavailable()):
        if missing is not None:
            pytest.skip(missing)


ROWS = """\
graph @rows(%x: f32[2,4096]) -> (f32[2,4096]) {
  %0 = softmax(%x) : f32[2,4096]
  return %0
}
"""


def test_emulate_runs_every_kernel_and_reports_each_ok_with_its_error(capsys):
    _needs_nvrtc_and_gxx()
    assert main([str(EXAMPLE), "-O2", "--target", "cuda", "--emulate"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# emulate")]
    assert len(lines) >= 2 and all(": OK, max error " in line for line in lines)
    errors = [float(line.split("max error ")[1].split()[0]) for line in lines]
    assert max(errors) < 1e-5


def test_emulate_race_reports_a_dropped_barrier_with_both_source_lines(tmp_path, capsys, monkeypatch):
    _needs_nvrtc_and_gxx()
    import backends.cuda.program

    path = tmp_path / "rows.kiln"
    path.write_text(ROWS)
    printed = backends.cuda.program.module_source
    monkeypatch.setattr(
        backends.cuda.program, "module_source", lambda kernels: printed(kernels).replace("__syncthreads();", ";", 1)
    )
    assert main([str(path), "--target", "cuda", "--emulate", "race"]) == 1
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("# emulate")]
    assert line.startswith("# emulate (race) k0_fused_0_softmax: RACE, max error -")
    report = out.split(line)[1]
    assert "#   data race in kernel k0_fused_0_softmax" in report
    assert len(re.findall(r"kiln_module\.cu:\d+ `[^`]+`", report.splitlines()[1])) == 2


def test_emulate_kernel_runs_only_the_named_kernel_and_rejects_unknown_names(capsys):
    _needs_nvrtc_and_gxx()
    assert (
        main([str(EXAMPLE), "-O2", "--target", "cuda", "--emulate", "bounds", "--kernel", "k0_fused_0_gemm_gelu"]) == 0
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# emulate")]
    assert len(lines) == 1 and lines[0].startswith("# emulate (bounds) k0_fused_0_gemm_gelu: OK")
    assert main([str(EXAMPLE), "-O2", "--target", "cuda", "--emulate", "--kernel", "k9_nothing"]) == 2
    assert "no kernel k9_nothing; the program has k0_fused_0_gemm_gelu" in capsys.readouterr().err


def test_emulate_needs_the_cuda_target(capsys):
    assert main([str(EXAMPLE), "--emulate", "race"]) == 2
    assert "--emulate needs --target cuda" in capsys.readouterr().err
