"""Whether a CPU kernel is worth spreading over the worker threads: a work estimate from its
kernel IR, and the threshold it must pass.

Used by `backends.cpu.program` to set each launch's `parallel` flag. A kernel whose estimate is
below the threshold runs on worker 0 alone (its IR may still hold a PARALLEL loop: the ABI runs
it whole with workers=1), which saves a barrier and, when no launch of a program is parallel,
the pool's wake-up.
"""

from __future__ import annotations

from ir.loop import Assign, Binary, Call, Cast, Expr, For, If, Kernel, Load, LoopKind, Select, Stmt, Store, Unary

TRANSCENDENTAL_COST = 8
"""Scalar operations a call to exp/tanh/erf/... counts as (libm, not inlined)."""

_TRANSCENDENTAL = frozenset({"exp", "log", "tanh", "erf", "sin", "cos", "tan", "asin", "acos", "atan", "sinh",
                             "cosh", "asinh", "acosh", "atanh", "pow"})  # fmt: skip

PARALLEL_MIN_WORK = 20_000
"""Estimated scalar operations below which a kernel runs on one worker.

From benchmarks/launch_overhead.py on this machine (2 cores, Zen 4 under KVM): a launch on
worker 0 alone costs ~0.1 µs, a parallel one adds a barrier, ~1-3 µs while the pool is awake,
and a program with any parallel launch pays the pool's start, ~1 µs awake but ~30 µs when the
workers have gone to sleep (a futex wake under the hypervisor). The kernels' scalar code runs
about 1-2 operations per ns, so 20,000 operations are ~10-20 µs of work: splitting saves half
of that, enough to pay a barrier even when the other core is shared; less does not."""


def expression_cost(expr: Expr) -> int:
    """Scalar operations to evaluate `expr` once (a load counts as one)."""
    match expr:
        case Load(index=index):
            return 1 + expression_cost(index)
        case Unary(op=op, x=x):
            return (TRANSCENDENTAL_COST if op in _TRANSCENDENTAL else 1) + expression_cost(x)
        case Binary(op=op, a=a, b=b):
            return (TRANSCENDENTAL_COST if op in _TRANSCENDENTAL else 1) + expression_cost(a) + expression_cost(b)
        case Select(condition=c, a=a, b=b):
            return 1 + expression_cost(c) + expression_cost(a) + expression_cost(b)
        case Cast(x=x):
            return 1 + expression_cost(x)
        case Call(args=args):
            return TRANSCENDENTAL_COST + sum(expression_cost(a) for a in args)
        case _:  # constants and variables: operands, not operations
            return 0


def statement_cost(statement: Stmt) -> int:
    """Scalar operations to run `statement` once: loops multiply their body by the trip count."""
    match statement:
        case For(extent=extent, body=body):
            return extent * (1 + sum(statement_cost(s) for s in body))
        case Store(index=index, value=value):
            return 1 + expression_cost(index) + expression_cost(value)
        case Assign(value=value):
            return expression_cost(value)
        case If(condition=condition, then=then, otherwise=otherwise):
            branch = max(sum(statement_cost(s) for s in then), sum(statement_cost(s) for s in otherwise))
            return expression_cost(condition) + branch
        case _:
            return 0


def kernel_work(kernel: Kernel) -> int:
    """The estimated scalar operations of one call of `kernel` (all its iterations)."""
    return sum(statement_cost(s) for s in kernel.body)


def worth_parallel(kernel: Kernel) -> bool:
    """Whether spreading `kernel` over the workers should pay: its body is one PARALLEL loop (the
    ABI's rule for splitting) and its work passes `PARALLEL_MIN_WORK`."""
    body = kernel.body
    splittable = len(body) == 1 and isinstance(body[0], For) and body[0].kind is LoopKind.PARALLEL
    return splittable and kernel_work(kernel) >= PARALLEL_MIN_WORK
