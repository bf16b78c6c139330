"""Whether the iterations of a loop may run on different workers (`iterations_independent`),
which `backends.cpu.split` asks of every piece it cuts from a kernel before making it PARALLEL.

The proof is about index arithmetic: every buffer the loop writes is accessed, in all its reads
and writes, at indices that are sums of terms `c * x`, where x is the loop's index or a digit of
it (`i % R`, `i / D % R`, `i / D`: lowering unflattens one parallel index into block, panel and
batch positions), an inner loop's index, or a bounded inner-only subexpression. Sorted by |c|,
the terms fall into blocks whose coefficients each exceed the largest value all smaller terms
can add up to (a mixed radix, as in a row-major index: columns below a row's stride); when each
digit of the loop's index has a block of its own and the digits together determine the index,
two iterations can only touch the same element if every block agrees, that is never.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

from ir.loop import Assign, Binary, Buffer, Cast, Const, Expr, For, If, Load, Ref, Select, Stmt, Store, Var

Interval = tuple[int, int]


def children(node: object) -> Iterator[object]:
    for field in dataclasses.fields(node):  # type: ignore[arg-type]
        value = getattr(node, field.name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, Expr | Stmt):
                yield item


def walk(node: object) -> Iterator[object]:
    """`node` and everything inside it, parents before children, in program order."""
    yield node
    for child in children(node):
        yield from walk(child)


def free_vars(statement: Stmt) -> tuple[set[Var], set[Var]]:
    """(variables read that the statement does not bind as a loop index, variables assigned)."""
    nodes = list(walk(statement))
    bound = {n.var for n in nodes if isinstance(n, For)}
    read = {n.var for n in nodes if isinstance(n, Ref)} - bound
    return read, {n.var for n in nodes if isinstance(n, Assign)}


# -- bounds of inner-only index arithmetic --------------------------------------------------------


def _affine(expr: Expr, outer: Var, ranges: dict[Var, Interval]) -> tuple[int, int, int] | None:
    """`expr` as `c * outer + r` with r in [lo, hi] over the inner loops' ranges: (c, lo, hi), or
    None when it is not of that form (a load, a variable of unknown range, outer under a division)."""
    match expr:
        case Const(value=value) if isinstance(value, int) and not isinstance(value, bool):
            return 0, value, value
        case Ref(var=var) if var is outer:
            return 1, 0, 0
        case Ref(var=var) if var in ranges:
            return 0, *ranges[var]
        case Cast(x=x):
            return _affine(x, outer, ranges)
        case Binary(op=op, a=a, b=b):
            left, right = _affine(a, outer, ranges), _affine(b, outer, ranges)
            if left is None or right is None:
                return None
            return _combine(op, left, right)
        case Select(a=a, b=b):
            left, right = _affine(a, outer, ranges), _affine(b, outer, ranges)
            if left is None or right is None or left[0] or right[0]:
                return None
            return 0, min(left[1], right[1]), max(left[2], right[2])
        case _:
            return None


def _combine(op: str, left: tuple[int, int, int], right: tuple[int, int, int]) -> tuple[int, int, int] | None:
    (c1, lo1, hi1), (c2, lo2, hi2) = left, right
    match op:
        case "add":
            return c1 + c2, lo1 + lo2, hi1 + hi2
        case "sub":
            return c1 - c2, lo1 - hi2, hi1 - lo2
        case "mul" if c1 == 0 and c2 == 0:
            corners = (lo1 * lo2, lo1 * hi2, hi1 * lo2, hi1 * hi2)
            return 0, min(corners), max(corners)
        case "mul" if (c2 == 0 and lo2 == hi2) or (c1 == 0 and lo1 == hi1):
            (c, lo, hi), k = (left, lo2) if c2 == 0 and lo2 == hi2 else (right, lo1)
            return c * k, min(lo * k, hi * k), max(lo * k, hi * k)
        case "div" if c1 == 0 and c2 == 0 and lo2 == hi2 and lo2 > 0 and lo1 >= 0:
            return 0, lo1 // lo2, hi1 // lo2
        case "mod" if c1 == 0 and c2 == 0 and lo2 == hi2 and lo2 > 0 and lo1 >= 0:
            return 0, 0, min(hi1, lo2 - 1)
        case "max" | "min" if c1 == 0 and c2 == 0:
            pick = max if op == "max" else min
            return 0, pick(lo1, lo2), pick(hi1, hi2)
        case _:
            return None


Scope = tuple[tuple[int, str], ...]
"""The statements around a mention of a variable, outermost first: (id, "for" | "then" | "else")."""


def _mentions(loop: For) -> dict[Var, list[tuple[Scope, bool, bool]]]:
    """Per variable the loop's body assigns: every mention in program order, as (scope, is an
    assignment, the assignment reads the variable itself)."""
    found: dict[Var, list[tuple[Scope, bool, bool]]] = {}

    def reads(expr: Expr, scope: Scope) -> None:
        for n in walk(expr):
            if isinstance(n, Ref):
                found.setdefault(n.var, []).append((scope, False, False))

    def visit(statements: tuple[Stmt, ...], scope: Scope) -> None:
        for statement in statements:
            match statement:
                case For(body=body, extent=extent):
                    # a loop that runs no iteration assigns nothing: a scope no assignment counts in
                    visit(body, (*scope, (id(statement), "for" if extent > 0 else "never")))
                case If(condition=condition, then=then, otherwise=otherwise):
                    reads(condition, scope)
                    visit(then, (*scope, (id(statement), "then")))
                    visit(otherwise, (*scope, (id(statement), "else")))
                case Assign(var=var, value=value):
                    reads(value, scope)
                    itself = any(isinstance(n, Ref) and n.var is var for n in walk(value))
                    found.setdefault(var, []).append((scope, True, itself))
                case _:
                    for child in children(statement):
                        if isinstance(child, Expr):
                            reads(child, scope)

    visit(loop.body, ())
    assigned = {n.var for n in walk(loop) if isinstance(n, Assign)}
    return {var: mentions for var, mentions in found.items() if var in assigned}


def _scalars_private(loop: For) -> bool:
    """Every variable the body assigns starts afresh in each iteration: its first mention is an
    assignment that does not read it, made whenever the innermost block holding all its mentions
    runs (inside loops that run, under no `If` of its own), so no read sees another iteration's
    value. (A GEMM's A element, assigned per k step inside its tile's branch, passes.)"""
    for mentions in _mentions(loop).values():
        scope, is_assignment, itself = mentions[0]
        if not is_assignment or itself:
            return False
        common = len(scope)
        for other, _, _ in mentions[1:]:
            common = next((k for k, (a, b) in enumerate(zip(scope, other)) if a != b), min(common, len(other)))
            common = min(common, len(other))
        if any(kind != "for" for _, kind in scope[common:]):
            return False
    return True


def _accesses(node: object) -> Iterator[Load | Store]:
    """The loads and stores in `node` in the order they happen: a store after what it reads."""
    for child in children(node):
        yield from _accesses(child)
    if isinstance(node, Load | Store):
        yield node


def _written_first(loop: For, buffer: Buffer) -> bool:
    """Whether the first access to `buffer` in `loop`'s body, in program order, is a store."""
    first = next((n for n in _accesses(loop) if n.buffer is buffer), None)
    return isinstance(first, Store)


# -- linear forms over digits of the loop's index ------------------------------------------------

Digit = tuple[int, int | None]
"""(D, R): the loop index's digit `i / D % R` (R None: `i / D`, no modulus)."""


@dataclass
class _Form:
    """An index as `const + sum(coefficient * term)`: each term is a digit of the loop's index, an
    inner loop's index or a bounded inner-only subexpression, ranging over 0 .. span."""

    digits: dict[Digit, int] = dataclasses.field(default_factory=dict)
    inner: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    """(coefficient, span) per inner term; a term that occurs twice is two entries (conservative)."""
    const: int = 0

    def plus(self, other: _Form, sign: int = 1) -> _Form:
        digits = dict(self.digits)
        for digit, c in other.digits.items():
            digits[digit] = digits.get(digit, 0) + sign * c
        digits = {d: c for d, c in digits.items() if c}
        inner = self.inner + [(sign * c, span) for c, span in other.inner]
        return _Form(digits, inner, self.const + sign * other.const)

    def times(self, k: int) -> _Form:
        return _Form({d: c * k for d, c in self.digits.items() if c * k},
                     [(c * k, span) for c, span in self.inner if c * k], self.const * k)  # fmt: skip

    @property
    def constant(self) -> bool:
        return not self.digits and not self.inner

    def single_digit(self) -> Digit | None:
        """The digit this form is exactly (coefficient 1, nothing else), if it is one."""
        if len(self.digits) == 1 and not self.inner and not self.const:
            ((digit, c),) = self.digits.items()
            return digit if c == 1 else None
        return None


def _linear(expr: Expr, outer: Var, ranges: dict[Var, Interval]) -> _Form | None:
    """`expr` as a `_Form`, or None (a load, an unknown variable, the loop's index in a product
    with another variable or under an operation that is not a digit's)."""
    if not any(isinstance(n, Ref) and n.var is outer for n in walk(expr)):
        match expr:
            case Ref(var=var) if var in ranges:
                lo, hi = ranges[var]
                return _Form(inner=[(1, hi - lo)], const=lo) if hi > lo else _Form(const=lo)
            case Binary(op="add" | "sub" | "mul"):
                pass  # linear in the inner indices: keep each one's coefficient
            case Cast(x=x):
                return _linear(x, outer, ranges)
            case _:
                bounds = _affine(expr, outer, ranges)
                if bounds is None:
                    return None
                _, lo, hi = bounds
                return _Form(inner=[(1, hi - lo)], const=lo) if hi > lo else _Form(const=lo)
    match expr:
        case Const(value=value) if isinstance(value, int) and not isinstance(value, bool):
            return _Form(const=value)
        case Ref(var=var) if var is outer:
            return _Form(digits={(1, None): 1})
        case Cast(x=x):
            return _linear(x, outer, ranges)
        case Binary(op=op, a=a, b=b):
            left, right = _linear(a, outer, ranges), _linear(b, outer, ranges)
            if left is None or right is None:
                return None
            return _combine_forms(op, left, right)
        case _:
            return None


def _combine_forms(op: str, left: _Form, right: _Form) -> _Form | None:
    match op:
        case "add":
            return left.plus(right)
        case "sub":
            return left.plus(right, -1)
        case "mul" if right.constant:
            return left.times(right.const)
        case "mul" if left.constant:
            return right.times(left.const)
        case "div" if right.constant and right.const > 0 and (digit := left.single_digit()) and digit[1] is None:
            return _Form(digits={(digit[0] * right.const, None): 1})
        case "mod" if right.constant and right.const > 0 and (digit := left.single_digit()):
            d, r = digit
            if r is not None and r % right.const:
                return None
            return _Form(digits={(d, right.const): 1})
        case _:
            return None


def _digits_determine_index(digits: set[Digit], extent: int) -> bool:
    """Whether these digits of an index in 0 .. extent together give the index back: from D = 1
    up, each digit starts where the ones below it stop."""
    covered = 1
    for d, r in sorted(digits, key=lambda digit: digit[0]):
        if d > covered:
            return False  # a gap: iterations that differ only there look alike
        covered = max(covered, d * r if r is not None else extent)
    return covered >= extent


def _disjoint(forms: list[_Form], extent: int) -> bool:
    """Whether accesses at `forms` (one buffer's) of different iterations never meet (module doc).

    Two accesses a (iteration i) and b (iteration i') meet when their difference is 0. Grouped by
    |coefficient| into levels, and levels into blocks (a block starts at a level above what every
    level below it can make the difference), the highest block where a and b differ differs by a
    multiple of its levels' gcd, which is more than everything below can make up: so they meet only
    if no block differs, and a digit alone in its block then has the same value in i and i'."""
    digits = forms[0].digits
    if not digits or any(f.digits != digits for f in forms) or not _digits_determine_index(set(digits), extent):
        return False
    digit_spans = {abs(c): c_span for (d, r), c in digits.items()
                   if (c_span := abs(c) * (min(r if r is not None else extent, -(-extent // d)) - 1)) >= 0}  # fmt: skip
    # per access: (|coefficient|, smallest, largest contribution) of each inner term, and its offset
    # as a term of the offsets' common step (the rows of an unrolled tile)
    low = min(f.const for f in forms)
    step = math.gcd(*(f.const - low for f in forms))
    terms = [[(abs(c), min(0, c * span), max(0, c * span)) for c, span in f.inner] for f in forms]
    if step:
        for access, f in zip(terms, forms, strict=True):
            access.append((step, f.const - low, f.const - low))
    if len(digit_spans) != len(digits) or any(abs(c) in {t[0] for a in terms for t in a} for c in digits.values()):
        return False  # two digits on one level, or a digit beside another term: not a block of its own

    def reach(levels: set[int]) -> int:
        """How far apart two accesses' sums of the terms on `levels` can be."""
        lows = [sum(t[1] for t in access if t[0] in levels) for access in terms]
        highs = [sum(t[2] for t in access if t[0] in levels) for access in terms]
        return max(highs) - min(lows) + sum(span for c, span in digit_spans.items() if c in levels)

    levels = sorted({t[0] for access in terms for t in access} | set(digit_spans))
    below: set[int] = set()
    block: list[int] = []
    for level in [*levels, None]:
        if block and (level is None or level > reach(below | set(block))):
            if math.gcd(*block) <= reach(below):
                return False  # two values of the block could differ by less than the blocks below
            if any(c in digit_spans for c in block) and len(block) > 1:
                return False  # a digit sharing its block: another term could make up its difference
            below |= set(block)
            block = []
        if level is not None:
            block.append(level)
    return True


def iterations_independent(loop: For, private: frozenset[Buffer] = frozenset()) -> bool:
    """Whether the iterations of `loop` may run on different workers: its scalars are private,
    and for every buffer it writes, no element is touched (read or written) by two iterations
    (the module doc's proof), or the buffer is `private` and each iteration stores to it before
    it reads it.

    `private` buffers are the kernel's locals that no other piece uses (a GEMM's packed panel and
    accumulator tile), which every worker allocates for itself. Lowering never reads a local
    element it has not written, so a local that lives in one loop nest only carries values
    within an iteration."""
    if loop.extent <= 1:
        return True  # one iteration shares nothing (split's `_spread` then takes in the loop inside)
    if not _scalars_private(loop):
        return False
    ranges: dict[Var, Interval] = {}
    accesses: dict[Buffer, list[Expr]] = {}

    def visit(node: object) -> None:
        if isinstance(node, For) and node is not loop:
            ranges[node.var] = (0, node.extent - 1)
        if isinstance(node, Load | Store):
            accesses.setdefault(node.buffer, []).append(node.index)
        for child in children(node):
            visit(child)

    visit(loop)
    written = {n.buffer for n in walk(loop) if isinstance(n, Store)}
    for buffer in written:
        if buffer in private and _written_first(loop, buffer):
            continue
        forms = [_linear(index, loop.var, ranges) for index in accesses[buffer]]
        if any(f is None for f in forms) or not _disjoint(forms, loop.extent):  # type: ignore[arg-type]
            return False
    return True
