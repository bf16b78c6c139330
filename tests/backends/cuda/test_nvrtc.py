"""NVRTC compiles what the CUDA printer writes, without a GPU: every kernel of the model tests for
sm_80 and sm_90 with a clean ptxas report (no spills, limits kept), both as the generic schedule
(fp32 and the bf16 pipeline) and as the program a model compiles to (the GPU templates: fp16,
bf16 and int8 tensor cores, the scatter epilogue), every printed construct on every dtype, and
the compile cache; errors say what went wrong."""

from __future__ import annotations

import functools
import sys

import pytest
import torch

from backends.cuda import (
    CudaCompilationError,
    KernelResources,
    NvrtcMissingError,
    compile_cuda,
    emit_kernel,
    gpu_schedule,
    parse_resources,
)
from backends.cuda import nvrtc as nvrtc_module
from ir.dtype import DType
from ir.loop import Buffer, Const, For, Kernel, Store
from tests.backends.cuda.kernels import model_kernels, requires_nvrtc
from tests.backends.cuda.test_codegen import BF16, BOOL, EXPRESSIONS, F16, F32, F64, I8, I32, I64, U8, i

MODELS = ["mlp", "resnet_cnn", "transformer_encoder_layer", "gpt_decoder_block", "gpt_decoder_block_masked"]
ARCHITECTURES = ["sm_80", "sm_90"]
REGISTERS_PER_SM = 65536
SHARED_BYTES_PER_BLOCK = 48 * 1024
"""Static shared memory: more needs dynamic shared memory and an opt-in, on sm_80 and sm_90."""
LOCAL_BYTES_PER_THREAD = 512 * 1024
INPUTS = (F32, F64, F16, BF16, I64, I32, I8, U8, BOOL)


@requires_nvrtc
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", MODELS)
def test_every_model_kernel_compiles_for_ampere_and_hopper_within_limits(name, precision):
    for kernel in model_kernels(name, precision):
        scheduled, (_, block) = gpu_schedule(kernel)
        source = emit_kernel(scheduled)
        for arch in ARCHITECTURES:
            binary = compile_cuda(source, arch, kernel.name)
            assert binary.cubin, f"{kernel.name}: empty cubin"
            report = binary.resources[kernel.name]
            threads = block[0] * block[1] * block[2]
            where = f"{kernel.name} on {arch}: {report}"
            assert report.spill_stores == report.spill_loads == 0, f"spills in {where}"
            assert report.registers * threads <= REGISTERS_PER_SM, f"too many registers in {where}"
            assert report.shared_bytes <= SHARED_BYTES_PER_BLOCK, f"too much shared memory in {where}"
            assert report.stack_bytes <= LOCAL_BYTES_PER_THREAD, f"too much local memory in {where}"


@functools.cache
def _imported(name: str):
    from compiler.frontends import import_model
    from tests.models.models import MODELS as FACTORIES

    return import_model(*FACTORIES[name]()).graph


def assert_within_limits(program, where: str) -> None:
    """Every launch of a CUDA `program` has no spills and fits an SM, on every architecture."""
    from backends.cuda.program import resources

    for arch in program.code["cubins"]:
        report = resources(program, arch)
        for launch in program.launches:
            found = report[launch.kernel]
            threads = launch.block[0] * launch.block[1] * launch.block[2]
            at = f"{launch.kernel} ({program.code['templates'].get(launch.kernel, '?')}) of {where} on {arch}: {found}"
            assert found.spill_stores == found.spill_loads == 0, f"spills in {at}"
            assert found.registers * threads <= REGISTERS_PER_SM, f"too many registers in {at}"
            assert found.shared_bytes + launch.shared_bytes <= 227 * 1024, f"too much shared memory in {at}"


# fp32 on sm_90 is tests/compiler/test_cuda_target.py's.
@requires_nvrtc
@pytest.mark.parametrize(
    ("precision", "arch"),
    [("fp32", ("sm_80",)), ("fp16", ARCHITECTURES), ("bf16", ARCHITECTURES), ("int8-dynamic", ARCHITECTURES)],
)
@pytest.mark.parametrize("name", MODELS)
def test_every_kernel_a_model_test_compiles_to_has_no_spills(name, precision, arch):
    """The kernels that run: the GPU templates (tensor-core GEMMs, attention, implicit-GEMM
    convolution, int8 MMA, epilogues that scatter a GEMM's result), else the generic schedule."""
    import compiler

    compiled = compiler.compile(_imported(name), target="cuda", precision=precision, arch=arch)
    assert_within_limits(compiled.program, f"{name} {precision}")


@requires_nvrtc
def test_bert_bases_qkv_projection_splits_its_heads_without_dividing_each_elements_offset():
    """BERT-base's QKV projection at sequence 128 in fp16: a 128 x 2304 GEMM whose epilogue
    scatters each element into queries, keys and values by head. Indexed per row and column (one
    division per column of a thread's tile), it needs ~93 registers on sm_90; dividing each
    element's flat offset took 254 and spilled."""
    import compiler

    class Projection(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = torch.nn.Linear(768, 3 * 768)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            q, k, v = self.qkv(x).view(1, 128, 3, 12, 64).permute(2, 0, 3, 1, 4).unbind(0)
            return q, k, v

    torch.manual_seed(0)
    compiled = compiler.compile(Projection().eval(), (torch.randn(1, 128, 768),), target="cuda", precision="fp16",
                                arch="sm_90")  # fmt: skip
    program = compiled.program
    (gemm,) = [launch for launch in program.launches if program.code["templates"].get(launch.kernel) == "gemm.mma"]
    assert_within_limits(program, "the QKV projection")
    assert compiled.stats["cuda"]["sm_90"][gemm.kernel].registers <= 128


@requires_nvrtc
def test_every_printed_construct_compiles_on_every_dtype():
    """The expression table of test_codegen, each stored into a buffer of its dtype: every
    helper of prelude.h the printer calls exists with the types it is called with."""
    outputs = {dtype: Buffer(f"out_{dtype}", dtype, (len(EXPRESSIONS),)) for dtype in DType}
    stores = tuple(Store(outputs[expr.dtype], Const(k, DType.i64), expr) for k, (expr, _) in enumerate(EXPRESSIONS))
    kernel = Kernel("constructs", (*INPUTS, *outputs.values()), (For(i, 1, stores),))
    binary = compile_cuda(emit_kernel(kernel), "sm_80", "constructs")
    assert binary.resources["constructs"].spill_stores == 0


@requires_nvrtc
def test_a_compile_error_carries_nvrtcs_log():
    with pytest.raises(CudaCompilationError, match=r"(?s)NVRTC could not compile broken for sm_90:.*undefined_name"):
        compile_cuda('#include "prelude.h"\nextern "C" __global__ void broken() { undefined_name = 1; }', name="broken")


@requires_nvrtc
def test_cubins_are_cached_on_disk_and_a_corrupt_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    source = '#include "prelude.h"\nextern "C" __global__ void cached(float* x) { x[threadIdx.x] = 1.0f; }\n'
    first = compile_cuda(source, "sm_90", "cached")
    second = compile_cuda(source, "sm_90", "cached")
    assert (first.cached, second.cached) == (False, True)
    assert second.cubin == first.cubin and second.resources == first.resources
    (entry,) = tmp_path.glob("cuda-*.cubin")
    entry.write_bytes(entry.read_bytes()[:-7])  # truncated
    third = compile_cuda(source, "sm_90", "cached")
    assert not third.cached and third.cubin == first.cubin
    assert compile_cuda(source, "sm_80", "cached").cached is False  # the architecture is part of the key


def test_a_missing_nvrtc_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", None)  # import fails
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(NvrtcMissingError, match=r"pip install 'kiln\[cuda\]'.*nvidia-cuda-nvrtc"):
        compile_cuda("", "sm_90")
    assert "kiln[cuda]" in nvrtc_module.missing_nvrtc()


def test_the_ptxas_report_is_read_per_kernel():
    log = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'softmax' for 'sm_90'
ptxas info    : Function properties for softmax
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 28 registers, used 1 barriers, 128 bytes smem, 384 bytes cmem[0]
ptxas info    : Compiling entry function 'copy' for 'sm_90'
ptxas info    : Function properties for copy
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, 368 bytes cmem[0]
"""
    assert parse_resources(log) == {
        "softmax": KernelResources(
            "softmax", registers=28, shared_bytes=128, stack_bytes=16, spill_stores=8, spill_loads=4, barriers=1
        ),
        "copy": KernelResources("copy", registers=8),
    }


def test_an_architecture_must_be_named_like_sm_90():
    with pytest.raises(ValueError, match="sm_90"):
        compile_cuda("", "compute_90")
