"""Explicit SIMD code for `For(kind=VECTORIZED)` loops of the LLVM code generator.

`backends.llvm.codegen` hands each vectorized loop here. The loop runs in steps of W lanes, the
loop variable standing for the vector <base, base+1, ..., base+W-1>, then a scalar remainder
loop does the last `extent % W` iterations with the scalar code generator. W comes from the
host's vector width and the widest element the lanes compute (`lanes`): 16 x f32 on AVX-512; an
extent that is a multiple of the native width and at most four times it is one iteration of
`extent` lanes (LLVM splits the over-wide vector into registers: a GEMM micro-kernel's 64
columns become 4 zmm per accumulator).

Every expression has a lane shape:
- *uniform*: it reads neither the loop variable nor a per-lane variable; the scalar code
  generator emits it once and it is broadcast where a vector is needed (index arithmetic stays
  scalar);
- *linear*: an i64 `uniform + var`, held as its scalar value in lane 0: a load or store there
  is one contiguous vector access;
- *varying*: anything else, held as a vector: loads and stores at varying indices are
  gathers and scatters (`llvm.masked.gather/scatter`).
Variables assigned inside the loop are per-lane (vector allocas, registers after mem2reg), so an
accumulator initialised and reduced within one iteration (an inner serial `For`) keeps one value
per lane. Inner loops run as scalar loops whose bodies compute vectors. A `Select` whose sides
read memory (a padding guard) evaluates each side under its lanes' mask: masked loads and
gathers, so no lane reads where the scalar code would not.

Each lane computes with the same LLVM operations as the scalar code (the intrinsics module's
helpers take vectors too), so results are bit-identical to the scalar path; libm functions are
called once per lane. A loop this module cannot prove safe (an `If`, a store two lanes or two
inner iterations could both write, a buffer read at another index than it is written, a
variable live outside the loop) is left to the scalar path with a comment saying why; those checks,
and the lane shapes, are `backends.llvm.vector_safety`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llvmlite import ir

from backends.llvm.intrinsics import I1, I32, I64, REGISTER_TYPES, STORAGE_TYPES, cast, narrow, type_suffix, widen
from backends.llvm.vector_safety import LaneShapes, Shape, obstacle, reads_memory, walk, widest_bits
from ir.dtype import DType
from ir.loop.nodes import (
    Assign,
    Binary,
    Buffer,
    Call,
    Cast,
    Expr,
    For,
    Load,
    LoopKind,
    Ref,
    Select,
    Stmt,
    Store,
    Unary,
    Var,
)
from runtime.cpu import host_vector_bits as runtime_vector_bits

if TYPE_CHECKING:
    from backends.llvm.codegen import _KernelEmitter


def host_vector_bits() -> int:
    """The widest vector register of the host: 512 with AVX-512, 256 with AVX, else 128 (as
    `runtime.cpu.limit_isa` leaves the host's features)."""
    return runtime_vector_bits()


def vector_bits() -> int:
    """The vector width code is generated for (tests replace this function to try others)."""
    return host_vector_bits()


def lanes(extent: int, element_bits: int) -> int:
    """How many iterations of a vectorized loop of `extent` run as one vector whose widest
    element has `element_bits`: all of them when the extent is one, two or four native vectors,
    else the native width (the largest power of two that fits, for short loops). 1 means the loop
    stays scalar. Three vectors are not one: LLVM compiled the GEMM's 48-lane tile columns
    (<48 x float>) into code ~40x slower than three iterations of 16 (measured on AVX-512)."""
    native = max(1, vector_bits() // element_bits)
    if extent % native == 0 and extent // native in (1, 2, 4):
        return extent
    if extent >= native:
        return native
    return 1 << (extent.bit_length() - 1) if extent > 0 else 1


def emit_loop(scalar: _KernelEmitter, loop: For) -> str | None:
    """Emit `loop` as vector code through the scalar emitter's builder; or return why it must
    stay scalar (having emitted nothing)."""
    width = lanes(loop.extent, widest_bits(loop))
    if width < 2:
        return f"{loop.extent} iteration(s) fill no vector"
    reason = obstacle(scalar.kernel.body, loop, width)
    if reason is not None:
        return reason
    _VectorLoop(scalar, loop, width).run()
    return None


# -- what the lanes compute ---------------------------------------------------------------------


@dataclass(frozen=True)
class Lanes:
    shape: Shape
    value: ir.Value
    """A scalar (uniform: the value; linear: lane 0's value) or a vector (varying)."""


# -- emission -----------------------------------------------------------------------------------


class _VectorLoop:
    def __init__(self, scalar: _KernelEmitter, loop: For, width: int) -> None:
        self.scalar, self.loop, self.width = scalar, loop, width
        self.builder = scalar.builder
        per_lane = {stmt.var for stmt, _ in walk(loop.body) if isinstance(stmt, Assign)}
        self.shapes = LaneShapes(loop.var, per_lane)
        self.slots: dict[Var, ir.Value] = {}
        self.base: ir.Value | None = None

    def run(self) -> None:
        loop, width, scalar = self.loop, self.width, self.scalar
        self.builder.comment(f"loop {loop.var.name}: {width} lanes per vector iteration")
        kind = REGISTER_TYPES[loop.var.dtype]
        main = loop.extent // width * width
        if main == width:  # one vector iteration: no loop at all
            self.base = ir.Constant(kind, 0)
            self._body(loop.body)
        elif main:
            start, end = ir.Constant(I64, 0), ir.Constant(I64, main)
            scalar._loop(loop, start, end, step=width, emit_body=self._vector_iteration)
        if main < loop.extent:
            remainder = For(loop.var, loop.extent, loop.body, LoopKind.SERIAL)
            scalar._loop(remainder, ir.Constant(I64, main), ir.Constant(I64, loop.extent))

    def _vector_iteration(self, body: Sequence[Stmt]) -> None:
        self.base = self.scalar.indices[self.loop.var]
        self._body(body)

    # -- statements -------------------------------------------------------------------------

    def _body(self, body: Sequence[Stmt]) -> None:
        for stmt in body:
            match stmt:
                case Assign(var, value):
                    self.builder.store(self.vector(self.emit(value)), self._slot(var))
                case Store(buffer, index, value):
                    self._store(buffer, index, value)
                case For(var, extent, inner, kind):  # a scalar loop whose body computes vectors
                    inner_kind = kind if kind is LoopKind.UNROLLED else LoopKind.SERIAL
                    zero, end = ir.Constant(I64, 0), ir.Constant(I64, extent)
                    self.scalar._loop(For(var, extent, inner, inner_kind), zero, end, emit_body=self._body)
                case _:  # the checks let nothing else through
                    raise self.scalar.fail(f"cannot vectorize {stmt!r}")

    def _store(self, buffer: Buffer, index: Expr, value: Expr) -> None:
        builder = self.builder
        where = self.emit(index)
        data = narrow(builder, self.vector(self.emit(value)), buffer.dtype)
        if where.shape is Shape.LINEAR:
            builder.store(data, self._pointer(buffer, where.value), align=buffer.dtype.itemsize)
            return
        # A scatter writes lanes in order, so lanes that collide leave the last one's value, as the scalar loop does.
        pointers = self._pointers(buffer, self.vector(where), index.dtype)
        self._masked("scatter", data.type, data, pointers, ir.Constant(I32, buffer.dtype.itemsize), self._all_lanes())

    def _slot(self, var: Var) -> ir.Value:
        if var not in self.slots:
            kind = ir.VectorType(REGISTER_TYPES[var.dtype], self.width)
            self.slots[var] = self.scalar._alloca(kind, f"{var.name}.lanes")
        return self.slots[var]

    # -- expressions ------------------------------------------------------------------------

    def emit(self, expr: Expr, mask: ir.Value | None = None) -> Lanes:
        """`expr` for every lane; only lanes set in `mask` (all when None) may read memory."""
        builder, shape = self.builder, self.shapes.of(expr)
        if shape is Shape.UNIFORM:
            return Lanes(Shape.UNIFORM, self._uniform(expr, mask))
        match expr:
            case Ref(var) if var is self.loop.var:
                base = Lanes(Shape.LINEAR, self.base)
                return base if shape is Shape.LINEAR else Lanes(Shape.VARYING, self.vector(base))
            case Ref(var):
                kind = ir.VectorType(REGISTER_TYPES[var.dtype], self.width)
                return Lanes(Shape.VARYING, builder.load(self._slot(var), typ=kind, name=var.name))
            case Load(buffer, index):
                return Lanes(Shape.VARYING, self._load(buffer, index, mask))
            case Binary(op, a, b) if shape is Shape.LINEAR:
                lanes_a, lanes_b = self.emit(a, mask), self.emit(b, mask)
                if op == "mul":  # linear * 1
                    return lanes_a
                # uniform + linear, linear +/- uniform: lane 0 is the scalar result (wrapping alike)
                return Lanes(Shape.LINEAR, (builder.add if op == "add" else builder.sub)(lanes_a.value, lanes_b.value))
            case Binary(op, a, b):
                values = (self.vector(self.emit(a, mask)), self.vector(self.emit(b, mask)))
                return Lanes(Shape.VARYING, self.scalar._emit_binary(op, *values, a.dtype))
            case Unary(op, x):
                return Lanes(Shape.VARYING, self.scalar._emit_unary(op, self.vector(self.emit(x, mask)), x.dtype))
            case Cast(x, dtype):
                return Lanes(Shape.VARYING, cast(builder, self.vector(self.emit(x, mask)), x.dtype, dtype))
            case Call(name, args, dtype):
                values = [self.vector(self.emit(a, mask)) for a in args]
                return Lanes(Shape.VARYING, self.scalar._call(name, values, dtype))
            case Select(condition, a, b):
                return Lanes(Shape.VARYING, self._select(condition, a, b, mask))
        raise self.scalar.fail(f"cannot vectorize {expr!r}")

    def vector(self, lanes: Lanes) -> ir.Value:
        """`lanes` as a vector (broadcast from a scalar, or base + <0, 1, ...> when linear)."""
        if lanes.shape is Shape.VARYING:
            return lanes.value
        kind = ir.VectorType(lanes.value.type, self.width)
        if isinstance(lanes.value, ir.Constant) and not isinstance(lanes.value.constant, (list, tuple)):
            broadcast = ir.Constant(kind, [lanes.value.constant] * self.width)
        else:
            first = self.builder.insert_element(ir.Constant(kind, ir.Undefined), lanes.value, ir.Constant(I32, 0))
            everywhere = ir.Constant(ir.VectorType(I32, self.width), [0] * self.width)
            broadcast = self.builder.shuffle_vector(first, ir.Constant(kind, ir.Undefined), everywhere)
        if lanes.shape is Shape.UNIFORM:
            return broadcast
        return self.builder.add(broadcast, ir.Constant(kind, list(range(self.width))))

    def _uniform(self, expr: Expr, mask: ir.Value | None) -> ir.Value:
        """A scalar computed once for all lanes; under a mask, only if some lane is active
        (it may read out of bounds where the scalar code would not read at all)."""
        if mask is None or not reads_memory(expr):
            return self.scalar._emit_expr(expr)
        builder = self.builder
        active = self._call(f"llvm.vector.reduce.or.{type_suffix(mask.type)}", I1, [mask])
        with builder.if_else(active) as (then_block, otherwise_block):
            with then_block:
                value, computed = self.scalar._emit_expr(expr), builder.block
            with otherwise_block:
                skipped = builder.block
        merged = builder.phi(value.type)
        merged.add_incoming(value, computed)
        merged.add_incoming(ir.Constant(value.type, 0.0 if expr.dtype.is_float else 0), skipped)
        return merged

    def _load(self, buffer: Buffer, index: Expr, mask: ir.Value | None) -> ir.Value:
        builder = self.builder
        where = self.emit(index, mask)
        kind = ir.VectorType(STORAGE_TYPES[buffer.dtype], self.width)
        align = ir.Constant(I32, buffer.dtype.itemsize)
        if where.shape is Shape.LINEAR:
            pointer = self._pointer(buffer, where.value, inbounds=mask is None)
            if mask is None:
                stored = builder.load(pointer, typ=kind, align=buffer.dtype.itemsize)
            else:
                stored = self._masked("load", kind, pointer, align, mask, ir.Constant(kind, None))
        else:
            pointers = self._pointers(buffer, self.vector(where), index.dtype, inbounds=mask is None)
            stored = self._masked("gather", kind, pointers, align, mask or self._all_lanes(), ir.Constant(kind, None))
        return widen(builder, stored, buffer.dtype)

    def _select(self, condition: Expr, a: Expr, b: Expr, mask: ir.Value | None) -> ir.Value:
        builder = self.builder
        predicate = self.emit(condition, mask)
        guarded = reads_memory(a) or reads_memory(b)
        if predicate.shape is Shape.UNIFORM and guarded:  # one branch for all lanes, as the scalar code
            with builder.if_else(predicate.value) as (then_block, otherwise_block):
                with then_block:
                    chosen_a, block_a = self.vector(self.emit(a, mask)), builder.block
                with otherwise_block:
                    chosen_b, block_b = self.vector(self.emit(b, mask)), builder.block
            merged = builder.phi(chosen_a.type)
            merged.add_incoming(chosen_a, block_a)
            merged.add_incoming(chosen_b, block_b)
            return merged
        if predicate.shape is Shape.UNIFORM:
            return builder.select(predicate.value, self.vector(self.emit(a, mask)), self.vector(self.emit(b, mask)))
        lanes_true = self.vector(predicate)
        mask_a, mask_b = mask, mask
        if guarded:  # each side reads memory only in the lanes that choose it
            lanes_false = builder.not_(lanes_true)
            mask_a = lanes_true if mask is None else builder.and_(mask, lanes_true)
            mask_b = lanes_false if mask is None else builder.and_(mask, lanes_false)
        chosen_a, chosen_b = self.vector(self.emit(a, mask_a)), self.vector(self.emit(b, mask_b))
        return builder.select(lanes_true, chosen_a, chosen_b)

    # -- memory -----------------------------------------------------------------------------

    def _pointer(self, buffer: Buffer, offset: ir.Value, inbounds: bool = True) -> ir.Value:
        """The address of `buffer[offset]`. A masked access may address elements outside the
        buffer in its masked-off lanes (x[i - 1] at i = 0), so its GEP must not claim `inbounds`:
        an out-of-bounds inbounds GEP is poison even where no lane reads through it."""
        base = self.scalar.pointers[buffer]
        pointer = self.builder.gep(base, [offset], inbounds=inbounds, source_etype=STORAGE_TYPES[buffer.dtype])
        pointer.type = ir.PointerType()  # llvmlite types an alloca's (local buffer's) pointer: vectors need `ptr`
        return pointer

    def _pointers(self, buffer: Buffer, offsets: ir.Value, dtype: DType, inbounds: bool = True) -> ir.Value:
        offsets = cast(self.builder, offsets, dtype, DType.i64)
        pointers = self._pointer(buffer, offsets, inbounds)
        pointers.type = ir.VectorType(ir.PointerType(), self.width)  # llvmlite types a GEP over a vector as one pointer
        return pointers

    def _all_lanes(self) -> ir.Constant:
        return ir.Constant(ir.VectorType(I1, self.width), [1] * self.width)

    def _masked(self, operation: str, data: ir.Type, *args: ir.Value) -> ir.Value:
        """llvm.masked.{load,gather,scatter} on vectors of `data`."""
        name = f"llvm.masked.{operation}.{type_suffix(data)}.{'p0' if operation == 'load' else f'v{self.width}p0'}"
        returns = ir.VoidType() if operation == "scatter" else data
        return self._call(name, returns, list(args))

    def _call(self, name: str, returns: ir.Type, args: list[ir.Value]) -> ir.Value:
        module = self.builder.module
        function = module.globals.get(name) or ir.Function(
            module, ir.FunctionType(returns, [a.type for a in args]), name
        )
        return self.builder.call(function, args)
