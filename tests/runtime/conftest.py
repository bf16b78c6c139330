"""Hand-written LLVM IR kernels that follow the runtime's ABI, and programs built from them.

The runtime is tested without Kiln's code generator: each kernel here is
`void NAME(ptr args, i64 worker, i64 workers)` over buffers of static size, and the parallel
ones run the rows [worker*n/workers, (worker+1)*n/workers), as generated code will.
Tests reach these through the `kernels` and `chain_program` fixtures (tests are imported in
importlib mode, so a helper module could not be imported by name).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from runtime import BufferSpec, Launch, Program, host_target, plan_arena

_LOAD_ARGS = """\
  %{name}.slot = getelementptr ptr, ptr %args, i64 {index}
  %{name} = load ptr, ptr %{name}.slot
"""

# The parallel split of the ABI, then a loop over [%lo, %hi) whose body is {body}.
_SPLIT_LOOP = """\
define void @{name}(ptr %args, i64 %worker, i64 %workers){attributes} {{
entry:
{loads}  %lo.scaled = mul i64 %worker, {n}
  %lo = sdiv i64 %lo.scaled, %workers
  %next.worker = add i64 %worker, 1
  %hi.scaled = mul i64 %next.worker, {n}
  %hi = sdiv i64 %hi.scaled, %workers
  %none = icmp sge i64 %lo, %hi
  br i1 %none, label %exit, label %loop
loop:
  %i = phi i64 [ %lo, %entry ], [ %i.next, %loop ]
{body}  %i.next = add i64 %i, 1
  %finished = icmp eq i64 %i.next, %hi
  br i1 %finished, label %exit, label %loop
exit:
  ret void
}}
"""


def _loads(*names: str) -> str:
    return "".join(_LOAD_ARGS.format(name=name, index=index) for index, name in enumerate(names))


def binary(name: str, op: str, n: int, element: str = "float", attributes: str = "") -> str:
    """out[i] = a[i] OP b[i]: args (a, b, out)."""
    body = f"""\
  %pa = getelementptr {element}, ptr %a, i64 %i
  %x = load {element}, ptr %pa
  %pb = getelementptr {element}, ptr %b, i64 %i
  %y = load {element}, ptr %pb
  %r = {op} {element} %x, %y
  %po = getelementptr {element}, ptr %out, i64 %i
  store {element} %r, ptr %po
"""
    return _SPLIT_LOOP.format(name=name, n=n, loads=_loads("a", "b", "out"), body=body, attributes=attributes)


def scale_in_place(name: str, factor: float, n: int) -> str:
    """x[i] *= factor: args (x,)."""
    body = f"""\
  %p = getelementptr float, ptr %x, i64 %i
  %v = load float, ptr %p
  %r = fmul float %v, {float(factor)!r}
  store float %r, ptr %p
"""
    return _SPLIT_LOOP.format(name=name, n=n, loads=_loads("x"), body=body, attributes="")


def rotate_add_one(name: str, n: int) -> str:
    """out[i] = src[(i + 1) % n] + 1: each worker reads rows another worker wrote in the launch
    before, so a missing barrier between launches shows as wrong values."""
    body = f"""\
  %j.raw = add i64 %i, 1
  %j = urem i64 %j.raw, {n}
  %p = getelementptr float, ptr %src, i64 %j
  %v = load float, ptr %p
  %r = fadd float %v, 1.0
  %po = getelementptr float, ptr %out, i64 %i
  store float %r, ptr %po
"""
    return _SPLIT_LOOP.format(name=name, n=n, loads=_loads("src", "out"), body=body, attributes="")


def copy_bits16(name: str, n: int) -> str:
    """out[i] = a[i] as 16-bit patterns (bf16 moves as its bits): args (a, out)."""
    body = """\
  %p = getelementptr i16, ptr %a, i64 %i
  %v = load i16, ptr %p
  %po = getelementptr i16, ptr %out, i64 %i
  store i16 %v, ptr %po
"""
    return _SPLIT_LOOP.format(name=name, n=n, loads=_loads("a", "out"), body=body, attributes="")


def serial_sum(name: str, n: int) -> str:
    """out[0] = sum(a) in order, on worker 0 only (not a parallel kernel): args (a, out)."""
    return f"""\
define void @{name}(ptr %args, i64 %worker, i64 %workers) {{
entry:
{_loads("a", "out")}  %first = icmp eq i64 %worker, 0
  br i1 %first, label %loop, label %exit
loop:
  %i = phi i64 [ 0, %entry ], [ %i.next, %loop ]
  %acc = phi float [ 0.0, %entry ], [ %acc.next, %loop ]
  %p = getelementptr float, ptr %a, i64 %i
  %v = load float, ptr %p
  %acc.next = fadd float %acc, %v
  %i.next = add i64 %i, 1
  %finished = icmp eq i64 %i.next, {n}
  br i1 %finished, label %store, label %loop
store:
  store float %acc.next, ptr %out
  br label %exit
exit:
  ret void
}}
"""


def record_workers(name: str) -> str:
    """calls[worker] += 1 and seen[worker] = workers: args (calls i64[k], seen i64[k])."""
    return f"""\
define void @{name}(ptr %args, i64 %worker, i64 %workers) {{
entry:
{_loads("calls", "seen")}  %pc = getelementptr i64, ptr %calls, i64 %worker
  %c = load i64, ptr %pc
  %c.next = add i64 %c, 1
  store i64 %c.next, ptr %pc
  %ps = getelementptr i64, ptr %seen, i64 %worker
  store i64 %workers, ptr %ps
  ret void
}}
"""


def zero_pair(name: str, n: int) -> str:
    """calls[:n] = seen[:n] = 0 (i64), on worker 0: args (calls, seen)."""
    return f"""\
define void @{name}(ptr %args, i64 %worker, i64 %workers) {{
entry:
{_loads("calls", "seen")}  %first = icmp eq i64 %worker, 0
  br i1 %first, label %loop, label %exit
loop:
  %i = phi i64 [ 0, %entry ], [ %i.next, %loop ]
  %pc = getelementptr i64, ptr %calls, i64 %i
  store i64 0, ptr %pc
  %ps = getelementptr i64, ptr %seen, i64 %i
  store i64 0, ptr %ps
  %i.next = add i64 %i, 1
  %finished = icmp eq i64 %i.next, {n}
  br i1 %finished, label %exit, label %loop
exit:
  ret void
}}
"""


def empty(name: str) -> str:
    return f"define void @{name}(ptr %args, i64 %worker, i64 %workers) {{\n  ret void\n}}\n"


def cpu_code(*kernels: str, cpu: str | None = None, features: str | None = None) -> dict:
    host = host_target()
    return {
        "llvm_ir": "\n".join(kernels),
        "triple": host["triple"],
        "cpu": host["cpu"] if cpu is None else cpu,
        "features": host["features"] if features is None else features,
    }


N = 1001  # odd, so the parallel split gives workers unequal shares


def make_chain_program(n: int = N) -> Program:
    """out = ((x + y) * c + x) scaled by 2 in place, through three intermediates:
    t1 = x + y (launch 0-1), t2 = t1 * c (1-2), t3 = t2 + x (2-3), out = t3 * t3 (3), out *= 2 (4).
    t1 and t3 never live at once, so the memory plan lets them share bytes."""
    f32 = "float32"
    buffers = (
        BufferSpec("x", f32, (n,), "input"),
        BufferSpec("y", f32, (n,), "input"),
        BufferSpec("c", f32, (n,), "constant"),
        BufferSpec("t1", f32, (n,), "intermediate"),
        BufferSpec("t2", f32, (n,), "intermediate"),
        BufferSpec("t3", f32, (n,), "intermediate"),
        BufferSpec("out", f32, (n,), "output"),
    )
    launches = (
        Launch("add", (0, 1, 3)),
        Launch("mul", (3, 2, 4)),
        Launch("add", (4, 0, 5)),
        Launch("mul", (5, 5, 6)),
        Launch("scale2", (6,)),
    )
    buffers, arena = plan_arena(buffers, launches, outputs=(6,))
    constant = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    code = cpu_code(binary("add", "fadd", n), binary("mul", "fmul", n), scale_in_place("scale2", 2.0, n))
    return Program("chain", buffers, (0, 1), (6,), {2: constant}, launches, arena, code)


def chain_reference(x: np.ndarray, y: np.ndarray, c: np.ndarray) -> np.ndarray:
    t3 = (x + y) * c + x
    return (t3 * t3) * np.float32(2.0)


@pytest.fixture
def kernels() -> SimpleNamespace:
    return SimpleNamespace(
        binary=binary,
        scale_in_place=scale_in_place,
        rotate_add_one=rotate_add_one,
        copy_bits16=copy_bits16,
        serial_sum=serial_sum,
        record_workers=record_workers,
        zero_pair=zero_pair,
        empty=empty,
        cpu_code=cpu_code,
        N=N,
    )


@pytest.fixture
def chain_program() -> Program:
    return make_chain_program()


@pytest.fixture
def chain_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal(N, dtype=np.float32), rng.standard_normal(N, dtype=np.float32)


@pytest.fixture
def chain_expected():
    return chain_reference
