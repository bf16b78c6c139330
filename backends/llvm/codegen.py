"""The LLVM code generator: kernel IR (`ir.loop`) to LLVM IR text, one function per kernel.

It only prints: lowering has decided the loops, their kinds and the memory accesses, and each
kernel-IR node becomes the llvmlite builder calls that compute exactly what
`ir.loop.interpreter` computes (the scalar numerics live in `backends.llvm.intrinsics`).
`backends.llvm.jit` then optimises the text for the host CPU and compiles it.

Every kernel becomes `void NAME(void **args, int64_t worker, int64_t workers)` (the runtime's
ABI): `args[p]` is the base address of `kernel.params[p]`. A body that is exactly one parallel
loop is split into contiguous ranges, worker `w` running `[w*n//workers, (w+1)*n//workers)`;
any other body runs on worker 0 while the others return at once. Vectorized loops become
explicit vector code (`backends.llvm.vectorize`); one that module cannot vectorize safely stays
a scalar loop carrying `llvm.loop.vectorize.enable` (and a comment saying why), and unrolled
loops carry `llvm.loop.unroll.full`, for LLVM's loop passes;
nested parallel loops run serially. Locals (`Assign` targets) are allocas that mem2reg turns
into registers; local buffers live on the stack up to `STACK_LIMIT` bytes and on the heap above.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llvmlite import ir

from backends.llvm import dot4
from backends.llvm.intrinsics import (
    I1,
    I64,
    MATH_FUNCTIONS,
    REGISTER_TYPES,
    STORAGE_TYPES,
    call_intrinsic,
    cast,
    constant,
    declare,
    integer_divide,
    integer_power,
    math_function,
    maximum,
    narrow,
    round_to_bf16,
    widen,
)
from backends.llvm.vectorize import emit_loop as emit_vectorized
from ir.dtype import DType
from ir.errors import KilnError
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
    LoopKind,
    Ref,
    Scope,
    Select,
    Stmt,
    Store,
    Unary,
    Var,
)
from ir.loop.printer import print_kernel
from runtime.cpu import host_target

STACK_LIMIT = 64 * 1024
"""Local buffers up to this many bytes are allocas; larger ones are malloc'd per call, since
worker threads may have small stacks."""


class CodegenError(KilnError):
    """A kernel uses something this backend cannot express (a GPU loop, a barrier, an unknown
    intrinsic); the message names the kernel and the node."""


# -- tables: kernel-IR operations to builder methods -------------------------------------------

_FLOAT_ARITHMETIC = {"add": "fadd", "sub": "fsub", "mul": "fmul", "div": "fdiv", "mod": "frem"}
_INTEGER_ARITHMETIC = {"add": "add", "sub": "sub", "mul": "mul", "and": "and_", "or": "or_", "xor": "xor"}
_EXACT_ARITHMETIC = frozenset({"mod"})  # fmod's result is representable: no rounding to bf16 after it
_COMPARISONS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
_LOOP_PROPERTIES = {
    LoopKind.VECTORIZED: [("llvm.loop.vectorize.enable", True)],
    LoopKind.UNROLLED: [("llvm.loop.unroll.full",)],
}


def _fma(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
    return call_intrinsic(builder, "fma", a, b, c)


def host_has_vnni() -> bool:
    """Whether the host has AVX-512 VNNI with 128/256-bit forms (avx512vl): `vpdpbusd` for any lanes."""
    return dot4.has_avx512_vnni(host_target()["features"])


def use_vnni() -> bool:
    """Whether `dot4_u8s8` becomes `vpdpbusd`: AVX-512 VNNI, or AVX-VNNI's ymm form on an AVX2-level
    host (tests replace this to run the other forms)."""
    features = host_target()["features"]
    return dot4.has_avx512_vnni(features) or dot4.has_avx_vnni(features)


def use_vpmaddwd() -> bool:
    """Without VNNI: whether `dot4_u8s8` takes AVX2's exact `vpmaddwd` form (tests replace this to run
    the plain arithmetic)."""
    return dot4.has_avx2(host_target()["features"])


def dot4_u8s8(builder: ir.IRBuilder, acc: ir.Value, a: ir.Value, b: ir.Value) -> ir.Value:
    """acc + sum over bytes q of u8(a_q) * s8(b_q), wrapping in i32, on scalars or vectors
    (`backends.llvm.dot4`): `vpdpbusd` on a VNNI host (zmm with AVX-512, ymm with AVX-VNNI), else
    AVX2's `vpmaddwd` on bytes widened to i16, else plain i32 arithmetic.

    The instructions are used for scalars too, not only for speed: LLVM 22 turns the plain
    arithmetic, once its SLP or loop vectorizer has widened it, into `vpdpwssd` on VNNI hosts and
    was seen to compute wrong sums there (edge columns of the int8 GEMM, varying run to run)."""
    if use_vnni():
        return dot4.vpdpbusd(builder, acc, a, b, widest=16 if host_has_vnni() else 8)
    if use_vpmaddwd():
        return dot4.vpmaddwd(builder, acc, a, b)
    return dot4.arithmetic(builder, acc, a, b)


@dataclass(frozen=True)
class _Intrinsic:
    """How a `Call` becomes LLVM IR: `emit(builder, *arguments)`, for the dtypes it is defined on."""

    emit: Callable[..., ir.Value]
    arity: int
    accepts: Callable[[DType], bool]
    """Whether the call's dtype (that of its result and of every argument) is one it takes."""


_CALLS = {
    "fma": _Intrinsic(_fma, 3, lambda dtype: dtype.is_float),  # llvm.fma: one rounding
    "dot4_u8s8": _Intrinsic(dot4_u8s8, 3, lambda dtype: dtype == DType.i32),
}
"""Target intrinsics (`Call` names) and how each is emitted."""

_DEFINE = re.compile(r'define [^@]*@"?([A-Za-z_][A-Za-z0-9_]*)"?\(')
_KERNEL_TYPE = ir.FunctionType(ir.VoidType(), [ir.PointerType(), I64, I64])


def emit_module(kernels: Sequence[Kernel], name: str) -> str:
    """LLVM IR text for `kernels`, one function each, every function preceded by a comment with
    the graph IR it came from and its kernel IR."""
    module = ir.Module(name=name)
    for kernel in kernels:
        if kernel.name in module.globals:
            raise CodegenError(f"kernel name {kernel.name!r} is taken in module {name!r}, by another kernel "
                               f"or by a library function the generated code calls")  # fmt: skip
        _KernelEmitter(module, kernel).emit()
    comments = {kernel.name: _comment(kernel) for kernel in kernels}
    lines = []
    for line in str(module).splitlines(keepends=True):
        defined = _DEFINE.match(line)
        if defined and defined.group(1) in comments:
            lines.append(comments[defined.group(1)])
        lines.append(line)
    header = f"; Kiln module {name}: {len(kernels)} kernel(s), each void NAME(void **args, i64 worker, i64 workers)\n"
    return header + "".join(lines)


def _comment(kernel: Kernel) -> str:
    lines = [f"kernel {kernel.name}"]
    if kernel.source:
        lines += ["from:", *("  " + line for line in kernel.source.rstrip().splitlines())]
    lines += ["kernel IR:", *("  " + line for line in print_kernel(kernel).rstrip().splitlines())]
    return "".join(f"; {line}".rstrip() + "\n" for line in lines)


class _LoopID(ir.values.MDValue):
    """A loop's metadata: LLVM finds loop properties in a distinct node whose first operand is
    the node itself, so it must not be uniqued (or hashed by its operands) like other nodes."""

    def __init__(self, module: ir.Module, properties: list[ir.values.MDValue]) -> None:
        super().__init__(module, [], name=str(len(module.metadata)))
        self.operands = (self, *properties)

    def descr(self, buf: list[str]) -> None:
        buf.append("distinct ")
        super().descr(buf)

    __eq__ = object.__eq__
    __hash__ = object.__hash__


def _reads_memory(expr: Expr) -> bool:
    match expr:
        case Load():
            return True
        case Unary(_, x) | Cast(x, _):
            return _reads_memory(x)
        case Binary(_, a, b):
            return _reads_memory(a) or _reads_memory(b)
        case Select(condition, a, b):
            return any(map(_reads_memory, (condition, a, b)))
        case Call(_, args, _):
            return any(map(_reads_memory, args))
    return False


def _calls_target_intrinsic(node) -> bool:
    """Whether a statement or expression calls `dot4_u8s8` (emitted as an x86 intrinsic on vectors)."""
    if isinstance(node, Call) and node.name == "dot4_u8s8":
        return True
    if isinstance(node, tuple):
        return any(map(_calls_target_intrinsic, node))
    if isinstance(node, (Stmt, Expr)):
        return any(_calls_target_intrinsic(getattr(node, f)) for f in node.__dataclass_fields__)
    return False


class _KernelEmitter:
    def __init__(self, module: ir.Module, kernel: Kernel) -> None:
        self.module, self.kernel = module, kernel
        self.function = ir.Function(module, _KERNEL_TYPE, kernel.name)
        self.function.attributes.add("nounwind")
        for argument, argument_name in zip(self.function.args, ("args", "worker", "workers")):
            argument.name = argument_name
        # The entry block holds the allocas only (mem2reg and the frame want them there); the code
        # starts in `start`, so inserting an alloca never moves the main builder's position.
        self.entry = self.function.append_basic_block("entry")
        self.start = self.function.append_basic_block("start")
        self.builder = ir.IRBuilder(self.start)
        self.pointers: dict[Buffer, ir.Value] = {}
        self.indices: dict[Var, ir.Value] = {}  # loop variables: SSA values
        self.slots: dict[Var, ir.Value] = {}  # assigned variables: allocas

    def fail(self, message: str) -> CodegenError:
        return CodegenError(f"kernel {self.kernel.name}: {message}")

    # -- the function ---------------------------------------------------------------------------

    def emit(self) -> None:
        builder, kernel = self.builder, self.kernel
        args, worker, workers = self.function.args
        for position, buffer in enumerate(kernel.params):
            slot = builder.gep(args, [ir.Constant(I64, position)], inbounds=True, source_etype=ir.PointerType())
            self.pointers[buffer] = builder.load(slot, name=buffer.name, typ=ir.PointerType(), align=8)
        done = self.function.append_basic_block("done")
        body = kernel.body
        parallel = len(body) == 1 and isinstance(body[0], For) and body[0].kind is LoopKind.PARALLEL
        if not parallel:  # one worker runs the whole body; the others return at once
            work = self.function.append_basic_block("work")
            builder.cbranch(builder.icmp_unsigned("==", worker, ir.Constant(I64, 0)), work, done)
            builder.position_at_end(work)
        heap = self._allocate_locals()
        if parallel:
            loop = body[0]
            extent = ir.Constant(I64, loop.extent)
            start = builder.udiv(builder.mul(extent, worker), workers)
            end = builder.udiv(builder.mul(extent, builder.add(worker, ir.Constant(I64, 1))), workers)
            # Clamped to the extent (a no-op for 0 <= worker < workers) so that LLVM sees the trip
            # count's bound: unbounded, it vectorizes a 3-iteration loop 64 wide, unrolled inner
            # loops and all (seconds of compile time and thousands of lines for a tiny kernel).
            start, end = (call_intrinsic(builder, "umin", bound, extent) for bound in (start, end))
            self._loop(loop, start, end)
        else:
            self._emit_body(body)
        for pointer in heap:
            builder.call(declare(self.module, "free", ir.VoidType(), ir.PointerType()), [pointer])
        builder.branch(done)
        self._move_last(done)
        builder.position_at_end(done)
        builder.ret_void()
        ir.IRBuilder(self.entry).branch(self.start)

    def _move_last(self, block: ir.Block) -> None:
        """Blocks print in list order: an exit made before its loop's body reads best after it."""
        self.function.blocks.remove(block)
        self.function.blocks.append(block)

    def _allocate_locals(self) -> list[ir.Value]:
        heap = []
        for buffer in self.kernel.locals:
            if buffer.scope is not Scope.LOCAL:
                raise self.fail(f"{buffer.name} is a {buffer.scope.value} buffer, which the CPU has no use for")
            element = STORAGE_TYPES[buffer.dtype]
            size = buffer.size * buffer.dtype.itemsize
            if size <= STACK_LIMIT:
                self.pointers[buffer] = self._alloca(element, buffer.name, count=buffer.size)
                continue
            malloc = declare(self.module, "malloc", ir.PointerType(), I64)
            self.pointers[buffer] = self.builder.call(malloc, [ir.Constant(I64, size)], name=buffer.name)
            heap.append(self.pointers[buffer])
        return heap

    # -- statements -----------------------------------------------------------------------------

    def _emit_body(self, body: Sequence[Stmt]) -> None:
        for stmt in body:
            self._emit_stmt(stmt)

    def _emit_stmt(self, stmt: Stmt) -> None:
        match stmt:
            case Store(buffer, index, value):
                self._emit_store(buffer, index, value)
            case Assign(var, value):
                self.builder.store(self._emit_expr(value), self._slot(var))
            case For(var, extent, _, kind):
                if kind.is_gpu:
                    raise self.fail(f"loop {var.name} is bound to {kind.value}; GPU schedules need the CUDA backend")
                if kind is LoopKind.VECTORIZED:
                    reason = emit_vectorized(self, stmt)
                    if reason is None:
                        return
                    self.builder.comment(f"loop {var.name} stays scalar for LLVM's vectorizer: {reason}")
                    if _calls_target_intrinsic(stmt):  # LLVM cannot widen vpdpbusd: asking only prints a warning
                        stmt = For(var, extent, stmt.body, LoopKind.SERIAL)
                zero = ir.Constant(I64, 0)
                self._loop(stmt, zero, ir.Constant(I64, extent))
            case If(condition, then, otherwise):
                self._emit_if(condition, then, otherwise)
            case Barrier():
                raise self.fail("a barrier synchronises GPU threads; the CPU backend has none")
            case _:
                raise self.fail(f"unknown statement {stmt!r}")

    def _emit_store(self, buffer: Buffer, index: Expr, value: Expr) -> None:
        stored = narrow(self.builder, self._emit_expr(value), buffer.dtype)
        self.builder.store(stored, self._address(buffer, index), align=buffer.dtype.itemsize)

    def _emit_if(self, condition: Expr, then: Sequence[Stmt], otherwise: Sequence[Stmt]) -> None:
        predicate = self._emit_expr(condition)
        if not otherwise:
            with self.builder.if_then(predicate):
                self._emit_body(then)
            return
        with self.builder.if_else(predicate) as (then_block, otherwise_block):
            with then_block:
                self._emit_body(then)
            with otherwise_block:
                self._emit_body(otherwise)

    def _loop(
        self, loop: For, start: ir.Value, end: ir.Value, step: int = 1, emit_body: Callable | None = None
    ) -> None:
        """`for var in start..end by step` in LLVM's canonical shape (preheader, header with the
        index phi, body, one latch carrying the loop's metadata, exit), which the loop passes
        expect. `emit_body` (the vector emitter's, in vectorized loops) emits `loop.body`."""
        builder, kind = self.builder, REGISTER_TYPES[loop.var.dtype]
        if loop.var.dtype not in (DType.i64, DType.i32):
            raise self.fail(f"loop variable {loop.var.name} is {loop.var.dtype}; loops count in i64 or i32")
        start, end = (value if kind == I64 else builder.trunc(value, kind) for value in (start, end))
        preheader = builder.block
        header = self.function.append_basic_block(f"{loop.var.name}.header")
        body = self.function.append_basic_block(f"{loop.var.name}.body")
        exit_block = self.function.append_basic_block(f"{loop.var.name}.exit")
        builder.branch(header)
        builder.position_at_end(header)
        index = builder.phi(kind, name=loop.var.name)
        index.add_incoming(start, preheader)
        builder.cbranch(builder.icmp_signed("<", index, end), body, exit_block)
        builder.position_at_end(body)
        outer = self.indices.get(loop.var)  # a nested loop may reuse its parent's variable
        self.indices[loop.var] = index
        (emit_body or self._emit_body)(loop.body)
        following = builder.add(index, ir.Constant(kind, step), name=f"{loop.var.name}.next", flags=["nuw", "nsw"])
        latch = builder.branch(header)
        if loop.kind in _LOOP_PROPERTIES:
            latch.set_metadata("llvm.loop", _LoopID(self.module, [
                self.module.add_metadata([name, *(ir.Constant(I1, v) for v in values)])
                for name, *values in _LOOP_PROPERTIES[loop.kind]
            ]))  # fmt: skip
        index.add_incoming(following, builder.block)
        self._move_last(exit_block)
        builder.position_at_end(exit_block)
        if outer is None:
            del self.indices[loop.var]
        else:
            self.indices[loop.var] = outer

    # -- expressions ----------------------------------------------------------------------------

    def _emit_expr(self, expr: Expr) -> ir.Value:
        match expr:
            case Const(value, dtype):
                return constant(dtype, value)
            case Ref(var):
                return self._read(var)
            case Load(buffer, index):
                stored = self.builder.load(
                    self._address(buffer, index), typ=STORAGE_TYPES[buffer.dtype], align=buffer.dtype.itemsize
                )
                return widen(self.builder, stored, buffer.dtype)
            case Unary(op, x):
                return self._emit_unary(op, self._emit_expr(x), x.dtype)
            case Binary(op, a, b):
                return self._emit_binary(op, self._emit_expr(a), self._emit_expr(b), a.dtype)
            case Select(condition, a, b):
                return self._emit_select(condition, a, b)
            case Cast(x, dtype):
                return cast(self.builder, self._emit_expr(x), x.dtype, dtype)
            case Call(name, args, dtype):
                return self._emit_call(name, args, dtype)
        raise self.fail(f"unknown expression {expr!r}")

    def _emit_unary(self, op: str, x: ir.Value, dtype: DType) -> ir.Value:
        builder = self.builder
        match op, dtype.is_float:
            case "not", False if dtype == DType.bool:
                return builder.not_(x)
            case "neg", True:
                return builder.fneg(x)
            case "neg", False:
                return builder.neg(x)
            case "abs", False:
                return call_intrinsic(builder, "abs", x, ir.Constant(I1, 0)) if dtype.is_signed else x
            case (("floor" | "ceil" | "round"), False):  # integers are whole already
                return x
            case _, True if op in MATH_FUNCTIONS:
                return math_function(builder, op, [x], dtype)
        raise self.fail(f"{op} is not defined on {dtype}")

    def _emit_binary(self, op: str, a: ir.Value, b: ir.Value, dtype: DType) -> ir.Value:
        builder = self.builder
        if op in _COMPARISONS:
            if dtype.is_float:  # ordered comparisons are false on NaN; `ne` is true on NaN
                compare = builder.fcmp_unordered if op == "ne" else builder.fcmp_ordered
            else:
                compare = builder.icmp_signed if dtype.is_signed else builder.icmp_unsigned
            return compare(_COMPARISONS[op], a, b)
        match op, dtype.is_float:
            case (("max" | "min"), _):
                return maximum(builder, a, b, dtype, minimum=op == "min")
            case (("div" | "mod"), False):
                return integer_divide(builder, a, b, dtype, remainder=op == "mod")
            case "pow", True:
                return math_function(builder, "pow", [a, b], dtype)
            case "pow", False:
                return integer_power(builder, a, b, dtype)
        table = _FLOAT_ARITHMETIC if dtype.is_float else _INTEGER_ARITHMETIC
        if op not in table:
            raise self.fail(f"{op} is not defined on {dtype}")
        result = getattr(builder, table[op])(a, b)
        return round_to_bf16(builder, result) if dtype == DType.bf16 and op not in _EXACT_ARITHMETIC else result

    def _emit_select(self, condition: Expr, a: Expr, b: Expr) -> ir.Value:
        builder = self.builder
        predicate = self._emit_expr(condition)
        if not (_reads_memory(a) or _reads_memory(b)):
            return builder.select(predicate, self._emit_expr(a), self._emit_expr(b))
        # Only the chosen side may be evaluated: lowering guards out-of-bounds loads (padding) with a
        # select. LLVM's if-conversion still vectorizes this, with masked loads.
        with builder.if_else(predicate) as (then_block, otherwise_block):
            with then_block:
                chosen_a, block_a = self._emit_expr(a), builder.block
            with otherwise_block:
                chosen_b, block_b = self._emit_expr(b), builder.block
        merged = builder.phi(chosen_a.type)
        merged.add_incoming(chosen_a, block_a)
        merged.add_incoming(chosen_b, block_b)
        return merged

    def _emit_call(self, name: str, args: Sequence[Expr], dtype: DType) -> ir.Value:
        intrinsic = _CALLS.get(name)
        if (intrinsic is None or len(args) != intrinsic.arity or not intrinsic.accepts(dtype)
                or any(a.dtype != dtype for a in args)):  # fmt: skip
            raise self.fail(f"no LLVM intrinsic {name}<{dtype}> (known: fma on floats, dot4_u8s8 on i32)")
        return self._call(name, [self._emit_expr(a) for a in args], dtype)

    def _call(self, name: str, values: Sequence[ir.Value], dtype: DType) -> ir.Value:
        result = _CALLS[name].emit(self.builder, *values)
        return round_to_bf16(self.builder, result) if dtype == DType.bf16 else result  # one rounding, after it

    # -- variables and memory -------------------------------------------------------------------

    def _read(self, var: Var) -> ir.Value:
        if var in self.indices:
            return self.indices[var]
        if var in self.slots:
            return self.builder.load(self.slots[var], name=var.name, typ=REGISTER_TYPES[var.dtype])
        raise self.fail(f"{var.name} is read outside its loop or before it is assigned")

    def _slot(self, var: Var) -> ir.Value:
        if var in self.indices:
            raise self.fail(f"assignment to the loop variable {var.name}")
        if var not in self.slots:
            self.slots[var] = self._alloca(REGISTER_TYPES[var.dtype], var.name)
        return self.slots[var]

    def _alloca(self, kind: ir.Type, name: str, count: int | None = None) -> ir.Value:
        """An alloca at the top of the entry block, where mem2reg and the stack frame expect it;
        buffers (with a `count`) are aligned to a cache line for vector loads."""
        allocas = ir.IRBuilder(self.entry)
        allocas.position_at_start(self.entry)
        if count is None:
            return allocas.alloca(kind, name=name)
        buffer = allocas.alloca(kind, size=ir.Constant(I64, count), name=name)
        buffer.align = 64
        return buffer

    def _address(self, buffer: Buffer, index: Expr) -> ir.Value:
        if buffer not in self.pointers:
            raise self.fail(f"{buffer.name} is neither a parameter nor a local of the kernel")
        if not index.dtype.is_integer:
            raise self.fail(f"index of {buffer.name} is {index.dtype}, not an integer")
        offset = cast(self.builder, self._emit_expr(index), index.dtype, DType.i64)
        return self.builder.gep(
            self.pointers[buffer], [offset], inbounds=True, source_etype=STORAGE_TYPES[buffer.dtype]
        )
