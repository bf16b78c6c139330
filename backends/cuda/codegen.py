"""The CUDA printer: a scheduled kernel (`backends.cuda.schedule`) to CUDA C source for NVRTC.

It only prints: the schedule has bound loops to blocks and threads and chosen the memory
accesses; every kernel-IR node becomes source text that computes exactly what
`ir.loop.interpreter` computes. Statements and expressions each go through a table from node
type to a small `_print_<node>` function (a renderer as a table, like tinygrad's cstyle);
where plain C differs from the kernel IR's semantics (NaN-propagating max/min, guarded integer
division, saturating float-to-integer casts, rounding of f16/bf16 after every operation) the
text calls a helper of `prelude.h`, whose rules mirror `backends.llvm.intrinsics`.

A kernel becomes `extern "C" __global__ void NAME(const T* __restrict__ in..., T* __restrict__
out...)`, its parameters in `kernel.params` order; the source starts with a comment holding the
graph IR it came from and its kernel IR. f16 and bf16 live in registers as floats holding a
representable value (see prelude.h). Compile with `--fmad=false`: a contracted a*b+c rounds
once where the interpreter rounds twice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from backends.cuda.c_syntax import (
    ATOM,
    BITWISE,
    CALLS,
    CONDITIONAL,
    EQUALITY,
    EXACT_MATH,
    GPU_INDICES,
    IDENTIFIER,
    INFIX,
    INTEGER_CALLS,
    LOGICAL,
    LOW_PRECISION_ROUND,
    MATH,
    MMA,
    MMA_INT8,
    MMA_TF32,
    MULTIPLICATIVE,
    REGISTER_TYPES,
    RESERVED,
    SHUFFLED_DTYPES,
    SHUFFLES,
    SMALL_INTEGERS,
    STORAGE_TYPES,
    TF32_ROUND,
    UNARY,
    UNROLL,
)
from backends.cuda.codegen_tiles import (
    collective_group,
    print_async_copy,
    print_collective,
    print_tile_call,
    sixteen_byte_rows,
)
from backends.cuda.codegen_vector import print_vector_call, print_vector_loads, print_vector_store, vector_group
from backends.cuda.shared_memory import dynamic_shared_bytes, shared_offsets
from ir.dtype import DType
from ir.errors import KilnError
from ir.loop.lockstep import launch_dims
from ir.loop.nodes import (
    Assign,
    Barrier,
    Binary,
    Buffer,
    Call,
    Cast,
    Const,
    Expr,
    For,
    If,
    Kernel,
    Load,
    Ref,
    Scope,
    Select,
    Stmt,
    Store,
    Unary,
    Var,
)
from ir.loop.printer import print_kernel


class CudaCodegenError(KilnError):
    """A kernel uses something the CUDA printer cannot express (an unscheduled parallel loop, an
    unknown intrinsic); the message names the kernel and the node."""


def emit_kernel(kernel: Kernel) -> str:
    """CUDA C for one scheduled kernel: the comment, the prelude's include, the kernel."""
    return KernelPrinter(kernel).source()


class KernelPrinter:
    """Prints one kernel; `expr` prints a single expression (used by tests)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.names: dict[Buffer | Var, str] = {}
        self.taken: set[str] = set(RESERVED) | {kernel.name}
        for buffer in (*kernel.params, *kernel.locals):
            self.name(buffer)
        self.lines: list[str] = []
        self.depth = 1

    def fail(self, message: str) -> CudaCodegenError:
        return CudaCodegenError(f"kernel {self.kernel.name}: {message}")

    def name(self, thing: Buffer | Var) -> str:
        """A C identifier for a buffer or variable, unique in the kernel (they compare by
        identity, so two may share a name) and clear of C keywords and CUDA's built-ins."""
        if thing in self.names:
            return self.names[thing]
        base = thing.name if IDENTIFIER.fullmatch(thing.name) else re.sub(r"\W", "_", f"v_{thing.name}")
        chosen, suffix = base, 1
        while chosen in self.taken or chosen.startswith("kiln_"):
            suffix += 1
            chosen = f"{base}_{suffix}"
        self.taken.add(chosen)
        self.names[thing] = chosen
        return chosen

    # -- the kernel -----------------------------------------------------------------------------

    def source(self) -> str:
        kernel = self.kernel
        grid, block = launch_dims(kernel)
        written = {stmt.buffer for stmt in _statements(kernel.body) if isinstance(stmt, Store)}
        params = ",\n    ".join(
            f"{'' if buffer in written else 'const '}{STORAGE_TYPES[buffer.dtype]}* __restrict__ {self.name(buffer)}"
            for buffer in kernel.params
        )
        threads = math.prod(block)
        # (threads, 1): one resident block per SM is enough, so ptxas may give each thread up to
        # 65536 / threads registers; with the thread count alone it caps small blocks at 32-128
        # registers and spills the tensor-core tiles' fragments.
        header = [
            _comment(kernel, grid, block),
            '#include "prelude.h"\n\n',
            f'extern "C" __global__ void __launch_bounds__({threads}, 1) {kernel.name}(\n    {params}) {{\n',
        ]
        dynamic = shared_offsets(kernel)[0] if dynamic_shared_bytes(kernel) else {}
        if dynamic:
            self.lines.append("  KILN_DYNAMIC_SHARED(kiln_shared);  // the launch's dynamic shared memory\n")
        for buffer in kernel.locals:
            if buffer in dynamic:
                buffer_type = STORAGE_TYPES[buffer.dtype]
                self.lines.append(
                    f"  {buffer_type}* const {self.name(buffer)} = ({buffer_type}*)(kiln_shared + {dynamic[buffer]});\n"
                )
            else:
                self._declare_local(buffer)
        assigned = _assigned_vars(kernel.body)
        if assigned:  # declared up front: a first assignment may sit in a branch or loop above a later read
            self.lines.append("  // scalars (accumulators, positions)\n")
            for var in assigned:
                self.lines.append(f"  {REGISTER_TYPES[var.dtype]} {self.name(var)};\n")
        self.body(kernel.body)
        return "".join(header) + "".join(self.lines) + "}\n"

    def _declare_local(self, buffer: Buffer) -> None:
        match buffer.scope:
            case Scope.LOCAL:
                qualifier = ""  # per-thread: registers or the thread's local memory (stack)
            case Scope.SHARED:
                # cp.async and ldmatrix move 16-byte rows; other arrays keep their natural alignment
                qualifier = "__shared__ __align__(16) " if buffer in sixteen_byte_rows(self.kernel) else "__shared__ "
            case _:
                raise self.fail(f"local buffer {buffer.name} has scope {buffer.scope.value}")
        self.lines.append(f"  {qualifier}{STORAGE_TYPES[buffer.dtype]} {self.name(buffer)}[{max(buffer.size, 1)}];\n")

    # -- statements -----------------------------------------------------------------------------

    def body(self, statements: Sequence[Stmt]) -> None:
        skip = 0
        for position, stmt in enumerate(statements):
            if skip:
                skip -= 1
                continue
            grouped = collective_group(statements, position)  # four Assigns of one ldmatrix or MMA: one call
            if grouped:
                print_collective(self, statements[position : position + grouped])
                skip = grouped - 1
                continue
            grouped = vector_group(statements, position)  # the Assigns of one vector load: one access
            if grouped:
                print_vector_loads(self, statements[position : position + grouped])
                skip = grouped - 1
                continue
            if _mma_product(statements, position):  # four Assigns of one tensor-core product: one call
                _print_mma_x4(self, statements[position : position + 4])
                skip = 3
                continue
            printer = _STATEMENTS.get(type(stmt))
            if printer is None:
                raise self.fail(f"unknown statement {stmt!r}")
            printer(self, stmt)

    def line(self, text: str) -> None:
        self.lines.append("  " * self.depth + text + "\n")

    def nested(self, statements: Sequence[Stmt]) -> None:
        self.depth += 1
        self.body(statements)
        self.depth -= 1

    # -- expressions ----------------------------------------------------------------------------

    def expr(self, expr: Expr, parent: int = 0) -> str:
        """`expr` as C text, parenthesised when it binds looser than its `parent` context."""
        printer = _EXPRESSIONS.get(type(expr))
        if printer is None:
            raise self.fail(f"unknown expression {expr!r}")
        text, precedence = printer(self, expr)
        return f"({text})" if precedence < parent else text


def _statements(body: Sequence[Stmt]) -> Iterator[Stmt]:
    for stmt in body:
        yield stmt
        match stmt:
            case For(_, _, loop_body, _):
                yield from _statements(loop_body)
            case If(_, then, otherwise):
                yield from _statements(then)
                yield from _statements(otherwise)


def _assigned_vars(body: Sequence[Stmt]) -> list[Var]:
    loop_vars = {stmt.var for stmt in _statements(body) if isinstance(stmt, For)}
    found = dict.fromkeys(stmt.var for stmt in _statements(body) if isinstance(stmt, Assign))
    return [var for var in found if var not in loop_vars]


def _comment(kernel: Kernel, grid: tuple[int, ...], block: tuple[int, ...]) -> str:
    lines = [f"Kiln kernel {kernel.name}: grid {grid}, block {block}"]
    if kernel.source:
        lines += ["from:", *("  " + line for line in kernel.source.rstrip().splitlines())]
    lines += ["kernel IR:", *("  " + line for line in print_kernel(kernel).rstrip().splitlines())]
    # A trailing backslash would splice the next line into the comment.
    return "".join(f"// {line}".rstrip().removesuffix("\\") + "\n" for line in lines) + "\n"


# -- statement printers ------------------------------------------------------------------------


def _print_store(p: KernelPrinter, stmt: Store) -> None:
    if print_async_copy(p, stmt) or print_vector_store(p, stmt):
        return
    value = p.expr(stmt.value)
    match stmt.buffer.dtype:
        case DType.f16:
            value = f"kiln_store_f16({value})"
        case DType.bf16:
            value = f"kiln_store_bf16({value})"
    p.line(f"{p.name(stmt.buffer)}[{p.expr(stmt.index)}] = {value};")


def _print_assign(p: KernelPrinter, stmt: Assign) -> None:
    p.line(f"{p.name(stmt.var)} = {p.expr(stmt.value)};")


def _print_for(p: KernelPrinter, loop: For) -> None:
    name, kind = p.name(loop.var), loop.kind
    var_type = REGISTER_TYPES[loop.var.dtype]
    if loop.var.dtype not in (DType.i64, DType.i32):
        raise p.fail(f"loop variable {loop.var.name} is {loop.var.dtype}; loops count in i64 or i32")
    if kind in GPU_INDICES:  # the launch runs the iterations: one per block or thread
        p.line(f"{{  // {kind.value}: {name} in 0..{loop.extent}")
        p.depth += 1
        p.line(f"const {var_type} {name} = {GPU_INDICES[kind]};")
        p.body(loop.body)
        p.depth -= 1
        p.line("}")
        return
    if kind not in UNROLL:
        raise p.fail(f"loop {loop.var.name} is {kind.value}; schedule the kernel for the GPU first (gpu_schedule)")
    p.line(UNROLL[kind])
    p.line(f"for ({var_type} {name} = 0; {name} < {loop.extent}; ++{name}) {{")
    p.nested(loop.body)
    p.line("}")


def _print_if(p: KernelPrinter, stmt: If) -> None:
    p.line(f"if ({p.expr(stmt.condition)}) {{")
    p.nested(stmt.then)
    if stmt.otherwise:
        p.line("} else {")
        p.nested(stmt.otherwise)
    p.line("}")


def _print_barrier(p: KernelPrinter, _stmt: Barrier) -> None:
    p.line("__syncthreads();")


def _mma_product(statements: Sequence[Stmt], position: int) -> bool:
    """Whether statements[position:position + 4] assign elements 0..3 of one MMA (same operands,
    none of them among the variables assigned): the device computes all four in one instruction."""
    group = statements[position : position + 4]
    if len(group) < 4 or not all(isinstance(s, Assign) and isinstance(s.value, Call) for s in group):
        return False
    calls = [s.value for s in group]
    first = calls[0]
    if first.name not in MMA.keys() | MMA_INT8.keys() | MMA_TF32.keys():
        return False
    if any(c.name != first.name or c.args[:-1] != first.args[:-1] for c in calls):
        return False
    if [c.args[-1] for c in calls] != [Const(e, DType.i32) for e in range(4)]:
        return False
    return not any(Ref(s.var) in first.args for s in group)


def _print_mma_x4(p: KernelPrinter, group: Sequence[Stmt]) -> None:
    call = group[0].value
    p.expr(call)  # validates the operands
    outputs = ", ".join(p.name(s.var) for s in group)
    function = MMA_INT8.get(call.name) or MMA_TF32.get(call.name) or MMA[call.name][0]
    p.line(f"{function}_x4({outputs}, {', '.join(p.expr(a) for a in call.args[:-1])});")


_STATEMENTS: dict[type, Callable[[KernelPrinter, Stmt], None]] = {
    Store: _print_store,
    Assign: _print_assign,
    For: _print_for,
    If: _print_if,
    Barrier: _print_barrier,
}


# -- expression printers: each returns (text, precedence) --------------------------------------

Printed = tuple[str, int]


def format_constant(value: int | float | bool, dtype: DType) -> Printed:
    """A constant of `dtype` in its register type, rounded to `dtype` as numpy rounds it."""
    if dtype == DType.bool:
        return ("true" if value else "false"), ATOM
    if dtype.is_float:
        number = float(np.asarray(dtype.numpy.type(value)).astype(np.float64))
        double = dtype == DType.f64
        if math.isfinite(number):
            text = repr(number) + ("" if double else "f")
            return text, UNARY if text.startswith("-") else ATOM
        if double:
            bits = int(np.float64(number).view(np.uint64))
            return f"__longlong_as_double({bits:#x}ULL)", ATOM
        return f"__uint_as_float({int(np.float32(number).view(np.uint32)):#x}u)", ATOM
    number = int(dtype.numpy.type(value))
    match dtype:
        case DType.i64 if not -(2**31) <= number < 2**31:
            text = "(-9223372036854775807LL - 1)" if number == -(2**63) else f"{number}LL"
            return text, ATOM if text.startswith("(") else (UNARY if number < 0 else ATOM)
        case DType.i32 if number == -(2**31):
            return "(-2147483647 - 1)", ATOM
        case DType.i8 | DType.u8:
            return f"({STORAGE_TYPES[dtype]}){number}", UNARY
    return str(number), UNARY if number < 0 else ATOM


def _print_const(p: KernelPrinter, expr: Const) -> Printed:
    return format_constant(expr.value, expr.dtype)


def _print_ref(p: KernelPrinter, expr: Ref) -> Printed:
    return p.name(expr.var), ATOM


def _print_load(p: KernelPrinter, expr: Load) -> Printed:
    element = f"{p.name(expr.buffer)}[{p.expr(expr.index)}]"
    if expr.buffer.dtype in LOW_PRECISION_ROUND:  # widened exactly to its float register
        return f"kiln_load({element})", ATOM
    return element, ATOM


def _round(dtype: DType, text: str) -> Printed:
    """`text`, a float result, rounded to `dtype` when that is f16 or bf16."""
    if dtype in LOW_PRECISION_ROUND:
        return f"{LOW_PRECISION_ROUND[dtype]}({text})", ATOM
    return text, ATOM


def _math_name(name: str, dtype: DType) -> str:
    return name if dtype == DType.f64 else f"{name}f"


def _print_unary(p: KernelPrinter, expr: Unary) -> Printed:
    op, x, dtype = expr.op, expr.x, expr.dtype
    if op == "not" and dtype == DType.bool:
        return f"!{p.expr(x, UNARY)}", UNARY
    if dtype.is_float:
        if op == "neg":  # exact in every format
            operand = p.expr(x, UNARY)
            # A negative literal or a nested negation: "--x" would be C's decrement operator.
            return (f"-({operand})" if operand.startswith("-") else f"-{operand}"), UNARY
        if op == "erf":  # in f64 then rounded, as the interpreter (Python's math.erf) and the CPU do
            wide = p.expr(Cast(x, DType.f64)) if dtype != DType.f64 else p.expr(x)
            return _cast_text((f"erf({wide})", ATOM), DType.f64, dtype)
        if op in MATH:
            call = f"{_math_name(MATH[op], dtype)}({p.expr(x)})"
            return (call, ATOM) if op in EXACT_MATH else _round(dtype, call)
    elif dtype.is_integer:
        register = REGISTER_TYPES[dtype]
        match op:
            case "neg":
                return f"kiln_negate<{register}>({p.expr(x)})", ATOM
            case "abs":
                return (f"kiln_abs<{register}>({p.expr(x)})", ATOM) if dtype.is_signed else (p.expr(x), ATOM)
            case "floor" | "ceil" | "round":  # integers are whole already
                return p.expr(x, ATOM), ATOM
    raise p.fail(f"{op} is not defined on {dtype}")


def _print_binary(p: KernelPrinter, expr: Binary) -> Printed:
    op, a, b, dtype = expr.op, expr.a, expr.b, expr.a.dtype
    register = REGISTER_TYPES[dtype]
    match op:
        case "max" | "min":
            return f"kiln_{op}<{register}>({p.expr(a)}, {p.expr(b)})", ATOM
        case "and" | "or" | "xor" if dtype == DType.bool:
            return _infix(p, *LOGICAL[op], a, b)
        case "and" | "or" | "xor" if dtype.is_integer:
            return _wrap(dtype, _infix(p, *BITWISE[op], a, b))
        case "lt" | "le" | "gt" | "ge" | "eq" | "ne":  # ordered on NaN, `ne` unordered: as C
            return _infix(p, *INFIX[op], a, b)
        case "mod" if dtype.is_float:  # fmod is exact: no rounding after it
            return f"{_math_name('fmod', dtype)}({p.expr(a)}, {p.expr(b)})", ATOM
        case "pow" if dtype.is_float:
            return _round(dtype, f"{_math_name('pow', dtype)}({p.expr(a)}, {p.expr(b)})")
        case "add" | "sub" | "mul" | "div" if dtype.is_float:
            text, precedence = _infix(p, *INFIX[op], a, b)
            return _round(dtype, text) if dtype in LOW_PRECISION_ROUND else (text, precedence)
        case "div" | "mod" if dtype.is_integer and isinstance(b, Const) and int(b.value) not in (0, -1):
            symbol = "/" if op == "div" else "%"  # C's own operator is defined for such divisors
            return _wrap(dtype, _infix(p, symbol, MULTIPLICATIVE, a, b))
        case "div" | "mod" | "pow" if dtype.is_integer:
            helper = {"div": "kiln_div", "mod": "kiln_mod", "pow": "kiln_ipow"}[op]
            return f"{helper}<{register}>({p.expr(a)}, {p.expr(b)})", ATOM
        case "add" | "sub" | "mul" if dtype.is_integer:
            if dtype == DType.i64 and _constant_only(a) and _constant_only(b):
                return _infix_i64(p, op, a, b)
            if dtype == DType.i32:  # the kernel IR's i32 arithmetic wraps; C's signed overflow is undefined
                symbol, _ = INFIX[op]
                return f"(int32_t)((uint32_t)({p.expr(a)}) {symbol} (uint32_t)({p.expr(b)}))", UNARY
            return _wrap(dtype, _infix(p, *INFIX[op], a, b))
    raise p.fail(f"{op} is not defined on {dtype}")


def _infix(p: KernelPrinter, symbol: str, precedence: int, a: Expr, b: Expr) -> Printed:
    # Left-associative: the right operand needs parentheses at equal precedence.
    return f"{p.expr(a, precedence)} {symbol} {p.expr(b, precedence + 1)}", precedence


def _infix_i64(p: KernelPrinter, op: str, a: Expr, b: Expr) -> Printed:
    """Integer arithmetic on constants only: the left operand is made an int64_t first, since
    two int literals would be multiplied (and overflow) in int."""
    symbol, precedence = INFIX[op]
    return f"(int64_t){p.expr(a, UNARY)} {symbol} {p.expr(b, precedence + 1)}", precedence


def _wrap(dtype: DType, printed: Printed) -> Printed:
    """i8 and u8 arithmetic wraps: C computes it in int, so the result is cast back."""
    if dtype in SMALL_INTEGERS:
        return f"({STORAGE_TYPES[dtype]})({printed[0]})", UNARY
    return printed


def _constant_only(expr: Expr) -> bool:
    match expr:
        case Const():
            return True
        case Unary(_, x) | Cast(x, _):
            return _constant_only(x)
        case Binary(_, a, b):
            return _constant_only(a) and _constant_only(b)
    return False


def _print_select(p: KernelPrinter, expr: Select) -> Printed:
    # C evaluates only the chosen side: lowering guards out-of-bounds loads (padding) this way.
    condition = p.expr(expr.condition, CONDITIONAL + 1)
    return f"{condition} ? {p.expr(expr.a, CONDITIONAL)} : {p.expr(expr.b, CONDITIONAL)}", CONDITIONAL


def _print_cast(p: KernelPrinter, expr: Cast) -> Printed:
    source, target = expr.x.dtype, expr.dtype
    if source == target:
        return p.expr(expr.x, ATOM), ATOM
    if target == DType.bool:  # NaN != 0 is true, as in numpy
        return f"{p.expr(expr.x, EQUALITY + 1)} != 0", EQUALITY
    x = p.expr(expr.x)
    return _cast_text((x, _precedence(p, expr.x)), source, target)


def _precedence(p: KernelPrinter, expr: Expr) -> int:
    return _EXPRESSIONS[type(expr)](p, expr)[1]


def _cast_text(x: Printed, source: DType, target: DType) -> Printed:
    """`x` (C text of a `source` register value, and its precedence) converted to `target` as
    `ir.loop.interpreter.cast_scalar` does."""
    text = x[0]
    prefix = text if x[1] >= UNARY else f"({text})"  # the operand of a C cast `(T)x`
    if source.is_float and target.is_float:
        return _float_to_float(text, prefix, x[1], source, target)
    if source.is_float and target.is_integer:  # truncation, saturating where C is undefined
        return f"kiln_to_{target}({text})", ATOM
    if target == DType.bf16:  # rounded once, as ml_dtypes (>= 0.7) and the CPU backend convert
        return (f"kiln_i64_to_bf16({text})" if source == DType.i64 else f"kiln_f64_to_bf16((double){prefix})"), ATOM
    if target in LOW_PRECISION_ROUND:  # integers and bools: to float, then rounded (as the CPU does)
        return _round(target, f"(float){prefix}")
    return f"({REGISTER_TYPES[target]}){prefix}", UNARY  # integers wrap; bool is 0 or 1


def _float_to_float(text: str, prefix: str, precedence: int, source: DType, target: DType) -> Printed:
    match target, source:
        case DType.bf16, DType.f64:  # rounded once, through round-to-odd f32
            return f"kiln_f64_to_bf16({text})", ATOM
        case DType.bf16, _:
            return f"kiln_round_bf16({text})", ATOM
        case DType.f16, DType.f64:
            return f"kiln_f64_to_f16({text})", ATOM
        case DType.f16, DType.bf16:
            return f"kiln_bf16_to_f16({text})", ATOM
        case DType.f16, _:
            return f"kiln_round_f16({text})", ATOM
        case DType.f32, DType.f16 | DType.bf16:  # the register already holds it exactly
            return text, precedence
    return f"({REGISTER_TYPES[target]}){prefix}", UNARY


def _print_call(p: KernelPrinter, expr: Call) -> Printed:
    name, args, dtype = expr.name, expr.args, expr.dtype
    tile_call = print_tile_call(p, expr) or print_vector_call(p, expr)
    if tile_call is not None:
        return tile_call
    if name in SHUFFLES:  # exact: a register moves between lanes
        value, operand = args
        if dtype not in SHUFFLED_DTYPES or value.dtype != dtype or operand.dtype != DType.i32:
            raise p.fail(f"{name} carries f64/f32/f16/bf16/i64/i32 with an i32 lane operand, not {dtype}")
        return f"{SHUFFLES[name]}({p.expr(value)}, {p.expr(operand)})", ATOM
    if name in MMA:  # 8 A and 4 B elements (f16/bf16 values in float registers), 4 C (f32), D's index
        function, operand = MMA[name]
        dtypes = [a.dtype for a in args]
        if dtypes != [operand] * 12 + [DType.f32] * 4 + [DType.i32] or dtype != DType.f32:
            raise p.fail(f"{name} takes 12 {operand} operands, 4 f32 and an i32 index, and gives f32")
        return f"{function}({', '.join(p.expr(a) for a in args)})", ATOM
    if name in MMA_INT8:  # 4 A and 2 B words (4 bytes each), 4 C (i32), D's index
        if len(args) != 11 or any(a.dtype != DType.i32 for a in args) or dtype != DType.i32:
            raise p.fail(f"{name} takes 11 i32 operands (4 A words, 2 B words, 4 C, an index) and gives i32")
        return f"{MMA_INT8[name]}({', '.join(p.expr(a) for a in args)})", ATOM
    if name in TF32_ROUND:
        if [a.dtype for a in args] != [DType.f32] or dtype != DType.f32:
            raise p.fail(f"{name} takes and gives f32")
        return f"{TF32_ROUND[name]}({p.expr(args[0])})", ATOM
    if name in MMA_TF32:  # 4 A and 2 B elements (TF32 values in f32 registers), 4 C (f32), D's index
        if [a.dtype for a in args] != [DType.f32] * 10 + [DType.i32] or dtype != DType.f32:
            raise p.fail(f"{name} takes 10 f32 operands (4 A, 2 B, 4 C) and an i32 index, and gives f32")
        return f"{MMA_TF32[name]}({', '.join(p.expr(a) for a in args)})", ATOM
    if name in INTEGER_CALLS and dtype == DType.i32 and all(a.dtype == DType.i32 for a in args):
        return f"{INTEGER_CALLS[name]}({', '.join(p.expr(a) for a in args)})", ATOM
    if name not in CALLS or not dtype.is_float or any(a.dtype != dtype for a in args):
        raise p.fail(f"no CUDA intrinsic {name}<{dtype}> (known: {', '.join(sorted(CALLS))} on floats)")
    # One rounding to f16/bf16, after the fused operation.
    return _round(dtype, f"{_math_name(CALLS[name], dtype)}({', '.join(p.expr(a) for a in args)})")


_EXPRESSIONS: dict[type, Callable[[KernelPrinter, Expr], Printed]] = {
    Const: _print_const,
    Ref: _print_ref,
    Load: _print_load,
    Unary: _print_unary,
    Binary: _print_binary,
    Select: _print_select,
    Cast: _print_cast,
    Call: _print_call,
}
