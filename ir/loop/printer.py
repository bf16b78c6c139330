"""The printer of the kernel IR: C-like text for `irdump --emit loop`, error messages and tests.

kernel fused_1_gemm_relu(in x: f32[16,32], in w: f32[32,8], out y: f32[16,8]) {
  parallel for i in 0..16 {
    for j in 0..8 {
      acc: f32 = 0.0
      for k in 0..32 {
        acc = acc + x[i * 32 + k] * w[k * 8 + j]
      }
      y[i * 8 + j] = max(acc, 0.0)
    }
  }
}
"""

from __future__ import annotations

from ir.dtype import DType
from ir.loop.nodes import (
    Assign,
    Barrier,
    Binary,
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
    Select,
    Stmt,
    Store,
    Unary,
)

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "mod": "%", "lt": "<", "le": "<=", "gt": ">",
          "ge": ">=", "eq": "==", "ne": "!=", "and": "&&", "or": "||", "xor": "^"}  # fmt: skip
_PRECEDENCE = {"or": 1, "xor": 2, "and": 3, "eq": 4, "ne": 4, "lt": 5, "le": 5, "gt": 5, "ge": 5,
               "add": 6, "sub": 6, "mul": 7, "div": 7, "mod": 7}  # fmt: skip


def format_const(value: int | float | bool, dtype: DType) -> str:
    if dtype == DType.bool:
        return "true" if value else "false"
    if dtype.is_float:
        text = repr(float(value))
        return text if dtype in (DType.f32, DType.f64) else f"{dtype}({text})"
    return str(int(value))


def format_expr(expr: Expr, parent: int = 0) -> str:
    match expr:
        case Const(value, dtype):
            return format_const(value, dtype)
        case Ref(var):
            return var.name
        case Load(buffer, index):
            return f"{buffer.name}[{format_expr(index)}]"
        case Unary("neg", x):
            return f"-{format_expr(x, 9)}"
        case Unary("not", x):
            return f"!{format_expr(x, 9)}"
        case Unary(op, x):
            return f"{op}({format_expr(x)})"
        case Binary(op, a, b) if op in _INFIX:
            precedence = _PRECEDENCE[op]
            # Left-associative: the right operand needs parentheses at equal precedence.
            text = f"{format_expr(a, precedence)} {_INFIX[op]} {format_expr(b, precedence + 1)}"
            return f"({text})" if precedence < parent else text
        case Binary(op, a, b):
            return f"{op}({format_expr(a)}, {format_expr(b)})"
        case Select(condition, a, b):
            return f"select({format_expr(condition)}, {format_expr(a)}, {format_expr(b)})"
        case Cast(x, dtype):
            return f"{dtype}({format_expr(x)})"
        case Call(name, args, dtype):
            return f"{name}<{dtype}>({', '.join(format_expr(a) for a in args)})"
    raise TypeError(f"not a kernel IR expression: {expr!r}")


def format_stmt(stmt: Stmt, indent: str, declared: set) -> list[str]:
    match stmt:
        case Store(buffer, index, value):
            return [f"{indent}{buffer.name}[{format_expr(index)}] = {format_expr(value)}"]
        case Assign(var, value):
            if var in declared:
                return [f"{indent}{var.name} = {format_expr(value)}"]
            declared.add(var)
            return [f"{indent}{var.name}: {var.dtype} = {format_expr(value)}"]
        case For(var, extent, body, kind):
            prefix = "" if kind is LoopKind.SERIAL else f"{kind.value} "
            lines = [f"{indent}{prefix}for {var.name} in 0..{extent} {{"]
            for inner in body:
                lines += format_stmt(inner, indent + "  ", declared)
            return [*lines, f"{indent}}}"]
        case If(condition, then, otherwise):
            lines = [f"{indent}if {format_expr(condition)} {{"]
            for inner in then:
                lines += format_stmt(inner, indent + "  ", declared)
            if otherwise:
                lines.append(f"{indent}}} else {{")
                for inner in otherwise:
                    lines += format_stmt(inner, indent + "  ", declared)
            return [*lines, f"{indent}}}"]
        case Barrier():
            return [f"{indent}barrier()"]
    raise TypeError(f"not a kernel IR statement: {stmt!r}")


def print_kernel(kernel: Kernel) -> str:
    outputs = set(kernel.outputs)
    params = ", ".join(
        f"{'out' if i in outputs else 'in'} {b.name}: {b.dtype}[{','.join(map(str, b.shape))}]"
        for i, b in enumerate(kernel.params)
    )
    lines = [f"kernel {kernel.name}({params}) {{"]
    for buffer in kernel.locals:
        lines.append(f"  {buffer.scope.value} {buffer.name}: {buffer.dtype}[{','.join(map(str, buffer.shape))}]")
    declared: set = set()
    for stmt in kernel.body:
        lines += format_stmt(stmt, "  ", declared)
    lines.append("}")
    return "\n".join(lines) + "\n"
