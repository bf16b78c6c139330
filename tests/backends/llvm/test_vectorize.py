"""Vectorized loops as explicit SIMD code (`backends.llvm.vectorize`): every lane shape (contiguous,
uniform, strided), masked loads behind padding guards, per-lane accumulators over an inner loop,
every dtype, extents around the vector width; each compared bit for bit with the kernel-IR
interpreter. Also the f32 exp and tanh written in LLVM IR (against float64), the vector types in
the emitted IR and the GEMM micro-kernel's zmm FMAs, and the scalar fallback."""

import re

import numpy as np
import pytest

from backends.llvm import emit_module, vectorize
from backends.lowering.group import lower_group
from ir import DType, GraphBuilder
from ir.loop import (
    Assign,
    Binary,
    Buffer,
    Call,
    Cast,
    Const,
    For,
    If,
    Kernel,
    Load,
    LoopKind,
    Ref,
    Scope,
    Select,
    Store,
    Unary,
    Var,
)
from passes import make_pass
from tests.backends.llvm.harness import (
    assert_bit_identical,
    call,
    compile_kernels,
    run_both,
    ulp_distance,
)

F32 = DType.f32
V = LoopKind.VECTORIZED


def check(kernel: Kernel, arrays: list[np.ndarray], module=None) -> None:
    module = module or compile_kernels([kernel])
    interpreted, compiled = run_both(module, kernel, arrays)
    for buffer, expected, actual in zip(kernel.params, interpreted, compiled):
        assert_bit_identical(actual, expected, buffer.name)


def random(dtype: DType, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == DType.bool:
        return rng.integers(0, 2, n).astype(np.bool_)
    if dtype.is_float:
        values = rng.normal(0, 3, n)
        values[: min(n, 4)] = [np.nan, -0.0, np.inf, 1.5][: min(n, 4)]
        return values.astype(dtype.numpy)
    info = np.iinfo(dtype.numpy)
    return rng.integers(max(info.min, -100), min(info.max, 100), n, endpoint=True).astype(dtype.numpy)


# -- lane shapes and extents ------------------------------------------------------------------


def axpy(n: int, dtype: DType = F32) -> Kernel:
    """y[i] = a[i] * 2 + b[i] over a vectorized i: contiguous loads and stores."""
    a, b, y = (Buffer(name, dtype, (n,)) for name in "aby")
    i = Var("i")
    value = Load(a, Ref(i)) * Const(2, dtype) + Load(b, Ref(i))
    return Kernel(f"axpy_{n}", (a, b, y), (For(i, n, (Store(y, Ref(i), value),), V),))


@pytest.mark.parametrize("n", [1, 3, 5, 8, 15, 16, 17, 40, 64, 100])
def test_contiguous_loops_of_any_extent_match_the_interpreter(n):
    kernel = axpy(n)
    check(kernel, [random(F32, n), random(F32, n, 1), np.zeros(n, np.float32)])


def test_a_contiguous_f32_loop_is_16_lane_vector_loads_and_stores():
    text = emit_module([axpy(64 * 3)], "contiguous")  # 192 = 12 vectors of 16, in a loop stepping by 16
    assert re.search(r"load <16 x float>, ptr", text), text
    assert re.search(r"store <16 x float> ", text), text
    assert "i.next" in text and 'add nuw nsw i64 %"i", 16' in text


def test_four_native_vectors_are_one_iteration_of_64_lanes():
    text = emit_module([axpy(64)], "wide")
    assert "load <64 x float>" in text and "store <64 x float>" in text
    assert "i.header" not in text  # no loop: one vector iteration


def test_the_vector_width_is_a_function_tests_can_replace(monkeypatch):
    monkeypatch.setattr(vectorize, "vector_bits", lambda: 256)
    kernel = axpy(40)
    text = emit_module([kernel], "avx2")
    assert "load <8 x float>" in text and "<16 x float>" not in text
    check(kernel, [random(F32, 40), random(F32, 40, 1), np.zeros(40, np.float32)])


def test_uniform_strided_and_scattered_accesses():
    """out[i, j] = x[i, j] * s[i] + x[j, i] (a transposed, strided read), and t[j, i] = x[i, j]
    (a scatter): j is the vectorized loop."""
    n = 19
    x, s = Buffer("x", F32, (n, n)), Buffer("s", F32, (n,))
    out, t = Buffer("out", F32, (n, n)), Buffer("t", F32, (n, n))
    i, j = Var("i"), Var("j")
    here, there = Ref(i) * n + Ref(j), Ref(j) * n + Ref(i)
    body = (
        Store(out, here, Load(x, here) * Load(s, Ref(i)) + Load(x, there)),
        Store(t, there, Load(x, here)),
    )
    kernel = Kernel("shapes", (x, s, out, t), (For(i, n, (For(j, n, body, V),), LoopKind.PARALLEL),))
    text = emit_module([kernel], "shapes")
    assert "llvm.masked.gather.v16f32" in text and "llvm.masked.scatter.v16f32" in text
    check(kernel, [random(F32, n * n), random(F32, n, 1), np.zeros(n * n, np.float32), np.zeros(n * n, np.float32)])


def test_select_guarded_loads_read_only_inside_the_buffer():
    """Padding on both sides of a 1-D convolution: x[j - 1] and x[j + 1] exist for some lanes
    only; the interpreter rejects any out-of-bounds read, the compiled code must mask it."""
    n = 37
    x, y = Buffer("x", F32, (n,)), Buffer("y", F32, (n,))
    j = Var("j")
    left = Select(Ref(j).ge(1), Load(x, Ref(j) - 1), Const(0.0, F32))
    right = Select(Ref(j).lt(n - 1), Load(x, Ref(j) + 1), Const(0.0, F32))
    kernel = Kernel("pad", (x, y), (For(j, n, (Store(y, Ref(j), left + Load(x, Ref(j)) + right),), V),))
    assert "llvm.masked.load.v16f32" in emit_module([kernel], "pad")
    check(kernel, [random(F32, n), np.zeros(n, np.float32)])


def test_a_uniform_load_behind_a_varying_guard_is_read_only_when_some_lane_needs_it():
    n = 20
    x, k, y = Buffer("x", F32, (n,)), Buffer("k", DType.i64, (1,)), Buffer("y", F32, (n,))
    j = Var("j")
    index = Load(k, Const(0, DType.i64))  # k[0] is -5: only a lane with j < 0 would read x[k[0]]
    guarded = Select(Ref(j).lt(0), Load(x, index), Load(x, Ref(j)))
    kernel = Kernel("uniform_guard", (x, k, y), (For(j, n, (Store(y, Ref(j), guarded),), V),))
    check(kernel, [random(F32, n), np.array([-5], np.int64), np.zeros(n, np.float32)])


def test_local_buffers_are_written_and_read_as_vectors():
    """A local (stack) buffer filled by one vectorized nest and read by the next."""
    rows, n = 3, 21
    x, y = Buffer("x", F32, (rows, n)), Buffer("y", F32, (rows, n))
    t = Buffer("t", F32, (rows, n), Scope.LOCAL)
    i, j, i2, j2 = Var("i"), Var("j"), Var("i2"), Var("j2")
    at, at2 = Ref(i) * n + Ref(j), Ref(i2) * n + Ref(j2)
    first = For(i, rows, (For(j, n, (Store(t, at, Load(x, at) * 3.0),), V),))
    second = For(i2, rows, (For(j2, n, (Store(y, at2, Load(t, at2) + Load(x, at2)),), V),))
    kernel = Kernel("local", (x, y), (first, second), locals=(t,))
    assert "store <16 x float>" in emit_module([kernel], "local")
    check(kernel, [random(F32, rows * n), np.zeros(rows * n, np.float32)])


# -- per-lane variables -------------------------------------------------------------------------


def gemm_microkernel(m: int, k: int, n: int, rows: int = 6, columns: int = 64, kind: LoopKind = V) -> Kernel:
    """C[i0 + r, j0 + jj] = sum_k A[i0 + r, k] * B[k, j0 + jj] with `rows` accumulators per
    lane of a vectorized jj, as the GEMM template writes it."""
    a, b, c = Buffer("A", F32, (m, k)), Buffer("B", F32, (k, n)), Buffer("C", F32, (m, n))
    io, jo, jj, p = Var("io"), Var("jo"), Var("jj"), Var("p")
    i0, j0 = Ref(io) * rows, Ref(jo) * columns
    accumulators = [Var(f"acc{r}", F32) for r in range(rows)]
    update = tuple(
        Assign(acc, Call("fma", (Load(a, (i0 + r) * k + Ref(p)), Load(b, Ref(p) * n + (j0 + Ref(jj))), Ref(acc)), F32))
        for r, acc in enumerate(accumulators)
    )
    body = (
        *(Assign(acc, Const(0.0, F32)) for acc in accumulators),
        For(p, k, update),
        *(Store(c, (i0 + r) * n + j0 + Ref(jj), Ref(acc)) for r, acc in enumerate(accumulators)),
    )
    tiles = For(jo, n // columns, (For(jj, columns, body, kind),))
    return Kernel(f"gemm_{kind.value}", (a, b, c), (For(io, m // rows, (tiles,), LoopKind.PARALLEL),))


def test_the_gemm_microkernel_keeps_24_zmm_accumulators_and_fmas_on_zmm():
    m, k, n = 12, 9, 128
    kernel = gemm_microkernel(m, k, n)
    module = compile_kernels([kernel])
    assert "<64 x float>" in module.llvm_ir and "stays scalar" not in module.llvm_ir
    if vectorize.host_vector_bits() == 512:
        fmas = re.findall(r"vfmadd\w+\s+[^\n]*%zmm", module.assembly)
        assert len(fmas) >= 24, module.assembly
        assert not re.search(r"vfmadd\w+ss", module.assembly)  # no scalar FMA left
    # The interpreter has no fma: the same kernel with a serial jj is the reference, and numpy.
    serial = gemm_microkernel(m, k, n, kind=LoopKind.SERIAL)
    a, b = random(F32, m * k), random(F32, k * n, 1)
    a[:4], b[:4] = 1.0, 1.0  # no nan or inf: numpy checks the sums too
    results = []
    for each in (kernel, serial):
        out = np.zeros(m * n, np.float32)
        call(compile_kernels([each]), each, [a, b, out])
        results.append(out)
    assert_bit_identical(results[0], results[1], "C")
    np.testing.assert_allclose(results[0].reshape(m, n), a.reshape(m, k) @ b.reshape(k, n), rtol=1e-4, atol=1e-4)


def test_per_lane_accumulators_over_an_inner_loop_with_an_odd_extent():
    """A row-wise dot product: y[j] = sum_p x[j, p] * w[p], vectorized over j (a strided gather
    per p), with a remainder: each lane keeps its own accumulator."""
    n, k = 21, 5
    x, w, y = Buffer("x", F32, (n, k)), Buffer("w", F32, (k,)), Buffer("y", F32, (n,))
    j, p, acc = Var("j"), Var("p"), Var("acc", F32)
    body = (
        Assign(acc, Const(0.0, F32)),
        For(p, k, (Assign(acc, Ref(acc) + Load(x, Ref(j) * k + Ref(p)) * Load(w, Ref(p))),)),
        Store(y, Ref(j), Ref(acc).max(Const(0.0, F32))),
    )
    kernel = Kernel("rowdot", (x, w, y), (For(j, n, body, V),))
    check(kernel, [random(F32, n * k), random(F32, k, 1), np.zeros(n, np.float32)])


# -- every dtype ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype",
    [DType.f32, DType.f64, DType.f16, DType.bf16, DType.i8, DType.u8, DType.i32, DType.i64, DType.bool],
    ids=str,
)
def test_every_dtype_matches_the_interpreter(dtype):
    n = 45
    a, b, y = Buffer("a", dtype, (n,)), Buffer("b", dtype, (n,)), Buffer("y", dtype, (n,))
    i = Var("i")
    x, z = Load(a, Ref(i)), Load(b, Ref(i))
    if dtype == DType.bool:
        value = Binary("xor", Binary("and", x, z), Unary("not", x))
    elif dtype.is_float:
        compute = F32 if dtype in (DType.f16, DType.bf16) else dtype
        wx, wz = x.cast(compute), z.cast(compute)
        value = Select(wx.gt(wz), wx * wz - wz, (wx / wz).max(Unary("floor", wx))).cast(dtype)
    else:
        value = Select(x.ge(z), x * z + x, Binary("div", x, z) - Binary("mod", z, x)).max(Unary("abs", z))
    mixed = Buffer("mixed", F32, (n,))  # casts between this dtype and f32 both ways
    round_trip = Cast(Cast(Load(a, Ref(i)), F32) * Const(1.5, F32), dtype).cast(F32)
    body = (Store(y, Ref(i), value), Store(mixed, Ref(i), round_trip))
    kernel = Kernel(f"all_{dtype}", (a, b, y, mixed), (For(i, n, body, V),))
    assert "x " in emit_module([kernel], "dtypes")  # vector types: "<16 x float>" etc.
    check(kernel, [random(dtype, n), random(dtype, n, 1), np.zeros(n, dtype.numpy), np.zeros(n, np.float32)])


@pytest.mark.parametrize("dtype", [DType.f32, DType.f64, DType.bf16], ids=str)
def test_libm_functions_per_lane_and_own_exp_agree_with_the_scalar_loop(dtype):
    """The same kernel vectorized and serial: exp and tanh (LLVM IR for f32) and the libm
    calls made per lane give the same bits as the scalar code."""
    n = 53
    x = Buffer("x", dtype, (n,))
    outputs = {op: Buffer(f"y_{op}", dtype, (n,)) for op in ("exp", "tanh", "sin", "erf", "atan")}
    kernels = []
    for kind in (V, LoopKind.SERIAL):
        i = Var("i")
        value = Load(x, Ref(i)).cast(F32 if dtype == DType.bf16 else dtype)
        body = tuple(Store(y, Ref(i), Unary(op, value).cast(dtype)) for op, y in outputs.items())
        kernels.append(Kernel(f"math_{kind.value}_{dtype}", (x, *outputs.values()), (For(i, n, body, kind),)))
    module = compile_kernels(kernels)
    data = random(dtype, n) / 2
    results = []
    for kernel in kernels:
        arrays = [data, *(np.zeros(n, dtype.numpy) for _ in outputs)]
        call(module, kernel, arrays)
        results.append(arrays[1:])
    for name, vector, scalar in zip(outputs, *results):
        assert_bit_identical(vector, scalar, name)


# -- what stays scalar ----------------------------------------------------------------------------


def test_a_body_with_an_if_stays_scalar_with_llvm_metadata_and_a_comment():
    n = 20
    x, y = Buffer("x", F32, (n,)), Buffer("y", F32, (n,))
    i = Var("i")
    body = (If(Load(x, Ref(i)).gt(Const(0.0, F32)), (Store(y, Ref(i), Load(x, Ref(i))),)),)
    kernel = Kernel("branchy", (x, y), (For(i, n, body, V),))
    text = emit_module([kernel], "fallback")
    assert "stays scalar for LLVM's vectorizer: its body has an If" in text
    assert '!{ !"llvm.loop.vectorize.enable", i1 true }' in text
    check(kernel, [random(F32, n), np.zeros(n, np.float32)])


@pytest.mark.parametrize(
    "case",
    ["carried", "inner_store", "read_elsewhere", "same_element"],
)
def test_loops_whose_lanes_could_interfere_stay_scalar(case):
    n = 24
    x, y = Buffer("x", F32, (n,)), Buffer("y", F32, (n,))
    i, p, acc = Var("i"), Var("p"), Var("acc", F32)
    bodies = {  # a sum across iterations; a store each inner iteration; y[i+1] read where y[i] is written
        "carried": (Assign(acc, Ref(acc) + Load(x, Ref(i))), Store(y, Ref(i), Ref(acc))),
        "inner_store": (For(p, 3, (Store(y, Ref(i) + Ref(p) * 0, Load(x, Ref(p))),)),),
        "read_elsewhere": (Store(y, Ref(i), Load(y, Const(0, DType.i64)) + Load(x, Ref(i))),),
        "same_element": (Store(y, Const(0, DType.i64), Load(x, Ref(i))),),
    }
    prologue = (Assign(acc, Const(0.0, F32)),) if case == "carried" else ()
    kernel = Kernel(f"interfere_{case}", (x, y), (*prologue, For(i, n, bodies[case], V)))
    assert "stays scalar" in emit_module([kernel], "interfere")
    check(kernel, [random(F32, n), random(F32, n, 1)])


# -- exp and tanh in LLVM IR ----------------------------------------------------------------------


def test_f32_exp_and_tanh_are_within_2_ulps_of_float64_over_the_whole_range():
    rng = np.random.default_rng(7)
    every_bit_pattern = rng.integers(0, 1 << 32, 1 << 19, dtype=np.uint64).astype(np.uint32).view(np.float32)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 88.72283, 88.72284, 89.0, -87.33655, -103.27893, -103.97208,
                -104.0, 1e-40, -1e-40, 1e-7, 0.75, -0.75, 0.7499999, 9.0, -9.1, 3.4e38, -3.4e38]  # fmt: skip
    x = np.concatenate([
        every_bit_pattern, rng.uniform(-105, 90, 1 << 18), rng.uniform(-2, 2, 1 << 18), specials,
    ]).astype(np.float32)  # fmt: skip
    n = x.size
    buffers = [Buffer(name, F32, (n,)) for name in ("x", "exp", "tanh")]
    i = Var("i")
    body = tuple(Store(out, Ref(i), Unary(out.name, Load(buffers[0], Ref(i)))) for out in buffers[1:])
    kernel = Kernel("exp_tanh", tuple(buffers), (For(i, n, body, V),))
    outputs = [x, np.zeros(n, np.float32), np.zeros(n, np.float32)]
    call(compile_kernels([kernel]), kernel, outputs)
    with np.errstate(all="ignore"):
        exact = {"exp": np.exp(x.astype(np.float64)), "tanh": np.tanh(x.astype(np.float64))}
    for name, actual in zip(("exp", "tanh"), outputs[1:]):
        # within 1 ulp of the correctly rounded f32, so within 1.5 ulps of the exact value
        distance = ulp_distance(actual, exact[name].astype(np.float32))
        worst = int(np.argmax(distance))
        assert distance.max() <= 1, f"{name}({x[worst]!r}) = {actual[worst]!r}, exact {exact[name][worst]!r}"
    assert np.isnan(outputs[1][np.isnan(x)]).all() and (outputs[1][x == -np.inf] == 0).all()
    assert (outputs[1][x == np.inf] == np.inf).all() and (outputs[2][x == -np.inf] == -1).all()


# -- lowering marks loops VECTORIZED ------------------------------------------------------------


def _loops(body):
    for stmt in body:
        if isinstance(stmt, For):
            yield stmt
            yield from _loops(stmt.body)


@pytest.mark.parametrize("shape", [(3, 40), (1024,), (50,)])
def test_lowering_vectorizes_the_innermost_loop_of_pointwise_nests(shape):
    b = GraphBuilder("pointwise")
    x = b.input("x", shape, F32)
    graph = make_pass("fuse").run(b.build(b.gelu(b.add(x, x), approximate="tanh")))
    (node,) = [n for n in graph.nodes if n.op == "fused"]
    kernel = lower_group(node, "k")
    (top,) = kernel.body
    assert top.kind is LoopKind.PARALLEL  # the ABI: one parallel loop over the workers
    kinds = [loop.kind for loop in _loops(kernel.body)]
    if shape == (50,):  # not a multiple of 16: one parallel loop, left to LLVM
        assert kinds == [LoopKind.PARALLEL]
    else:
        assert kinds[-1] is V and kinds.count(V) == 1
    data = random(F32, int(np.prod(shape))).reshape(shape)
    arrays = [data, np.zeros(shape, np.float32)]
    interpreted, compiled = run_both(compile_kernels([kernel]), kernel, arrays, workers=2)
    # tanh: ours against numpy's, each within ~1 ulp, but 1 + tanh cancels for negative inputs
    np.testing.assert_allclose(compiled[1], interpreted[1], rtol=1e-5, atol=1e-6)
