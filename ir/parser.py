"""Reads the text form that `ir.printer` writes back into a `Graph`.

The text is tokenised, parsed into statements, and then built node by node through the op
table: attributes are normalised, output types inferred and compared with the declared ones,
so a text that parses is a well-typed graph. Every error is a `ParseError` that quotes the
line and points at the column.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ir.dtype import DType
from ir.errors import KilnError, ParseError
from ir.graph import Graph, Node, Value
from ir.ops import get_op
from ir.types import TensorType

_TOKEN = re.compile(
    r"""
    (?P<newline>\n)
  | (?P<space>[ \t\r]+)
  | (?P<comment>\#[^\n]*)
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<symbol>@[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>-?(?:(?:inf|nan)\b|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?))
  | (?P<arrow>->)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[(){}\[\],:=<>])
""",
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    line: int
    column: int


def tokenize(text: str) -> list[Token]:
    tokens, line, line_start, position = [], 1, 0, 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise _error(text, line, position - line_start + 1, f"unexpected character {text[position]!r}")
        kind = match.lastgroup
        if kind != "space":
            tokens.append(Token(kind, match.group(), line, position - line_start + 1))
        if kind == "newline":
            line, line_start = line + 1, match.end()
        position = match.end()
    tokens.append(Token("end", "", line, position - line_start + 1))
    return tokens


def _error(text: str, line: int, column: int, message: str) -> ParseError:
    lines = text.splitlines()
    quoted = lines[line - 1] if 0 < line <= len(lines) else ""
    return ParseError(f"line {line}, column {column}: {message}\n  {quoted}\n  {' ' * (column - 1)}^")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.position = 0

    # -- token helpers ---------------------------------------------------------------------

    def peek(self, skip_newlines: bool = True) -> Token:
        if skip_newlines:
            while self.tokens[self.position].kind in ("newline", "comment"):
                self.position += 1
        return self.tokens[self.position]

    def next(self, skip_newlines: bool = True) -> Token:
        token = self.peek(skip_newlines)
        self.position += 1
        return token

    def error(self, token: Token, message: str) -> ParseError:
        return _error(self.text, token.line, token.column, message)

    def expect(self, text: str, skip_newlines: bool = True) -> Token:
        token = self.next(skip_newlines)
        if token.text != text:
            raise self.error(token, f"expected {text!r}, found {token.text or 'end of input'!r}")
        return token

    def expect_kind(self, kind: str, what: str) -> Token:
        token = self.next()
        if token.kind != kind:
            raise self.error(token, f"expected {what}, found {token.text or 'end of input'!r}")
        return token

    def accept(self, text: str) -> bool:
        if self.peek().text == text:
            self.position += 1
            return True
        return False

    def comma_separated(self, close: str, item) -> list:
        items = []
        if self.accept(close):
            return items
        while True:
            items.append(item())
            if self.accept(close):
                return items
            self.expect(",")

    # -- grammar ---------------------------------------------------------------------------

    def tensor_type(self) -> TensorType:
        token = self.expect_kind("ident", "a type such as f32[2,3]")
        try:
            dtype = DType.parse(token.text)
        except ValueError as error:
            raise self.error(token, str(error)) from None
        self.expect("[")
        dims = self.comma_separated("]", lambda: self.integer("a dimension"))
        return TensorType(tuple(dims), dtype)

    def integer(self, what: str) -> int:
        token = self.expect_kind("number", what)
        if not re.fullmatch(r"\d+", token.text):
            raise self.error(token, f"expected {what} (a non-negative integer), found {token.text!r}")
        return int(token.text)

    def attr_value(self) -> Any:
        token = self.next()
        if token.text == "[":
            return tuple(self.comma_separated("]", self.attr_value))
        if token.kind == "number":
            return _number(token.text)
        if token.kind == "string":
            return json.loads(token.text)
        if token.text in ("true", "false"):
            return token.text == "true"
        if token.text == "graph":
            self.position -= 1
            return self.graph_definition()
        if token.kind == "ident":
            try:
                return DType.parse(token.text)
            except ValueError:
                pass
        raise self.error(token, f"expected an attribute value, found {token.text or 'end of input'!r}")

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if not self.accept("{"):
            return attrs

        def item() -> None:
            name = self.expect_kind("ident", "an attribute name")
            self.expect("=")
            if name.text in attrs:
                raise self.error(name, f"attribute {name.text!r} given twice")
            attrs[name.text] = self.attr_value()

        self.comma_separated("}", item)
        return attrs

    def graph(self) -> Graph:
        return self.graph_definition(whole_text=True)

    def graph_definition(self, whole_text: bool = False) -> Graph:
        """A graph and its constants; the body of a region is one too, with its own names.
        With `whole_text`, nothing may follow (checked before nodes are built, so that trailing
        garbage is reported as such rather than as what it hides)."""
        self.expect("graph")
        name = self.expect_kind("symbol", "the graph's name, such as @main").text[1:]
        self.expect("(")
        values: dict[str, Value] = {}
        inputs: list[Value] = []

        def parameter() -> None:
            token = self.expect_kind("value", "an input such as %x")
            self.expect(":")
            value = Value(self.tensor_type(), token.text[1:])
            self.define(values, token, value)
            inputs.append(value)

        self.comma_separated(")", parameter)
        self.expect("->")
        self.expect("(")
        result_types = self.comma_separated(")", self.tensor_type)
        self.expect("{")
        statements = []
        while self.peek().text != "return":
            statements.append(self.statement())
        return_token = self.expect("return")
        result_tokens = []
        if self.peek().text != "}":
            result_tokens.append(self.expect_kind("value", "a returned value"))
            while self.accept(","):
                result_tokens.append(self.expect_kind("value", "a returned value"))
        self.expect("}")
        constants = self.constants() if self.peek().text == "constants" else {}
        if whole_text and (end := self.next()).kind != "end":
            raise self.error(end, f"expected end of input after the graph, found {end.text!r}")
        nodes = [self.build_node(statement, values, constants) for statement in statements]
        outputs = tuple(self.use(values, token) for token in result_tokens)
        declared = tuple(result_types)
        if tuple(v.type for v in outputs) != declared:
            found = ", ".join(str(v.type) for v in outputs)
            listed = ", ".join(str(t) for t in declared)
            raise self.error(return_token, f"the graph declares results ({listed}) but returns ({found})")
        return Graph(name, tuple(inputs), outputs, tuple(nodes), constants)

    def statement(self) -> tuple:
        results = [self.expect_kind("value", "a node's result such as %0")]
        while self.accept(","):
            results.append(self.expect_kind("value", "a node's result"))
        self.expect("=")
        op_token = self.expect_kind("ident", "an op name")
        if op_token.text == "const":
            symbol = self.expect_kind("symbol", "the constant's name, such as @w0")
            self.expect(":")
            return (results, op_token, [], {"name": symbol.text[1:]}, [self.tensor_type()], self.source())
        self.expect("(")
        operands = self.comma_separated(")", lambda: self.expect_kind("value", "an input value"))
        attrs = self.attributes()
        self.expect(":")
        types = [self.tensor_type()]
        while self.peek(skip_newlines=False).text == ",":
            self.next()
            types.append(self.tensor_type())
        return (results, op_token, operands, attrs, types, self.source())

    def source(self) -> str | None:
        token = self.peek(skip_newlines=False)
        if token.kind == "comment":
            self.position += 1
            return token.text[1:].strip() or None
        if token.kind not in ("newline", "end"):
            raise self.error(token, f"expected the end of the line, found {token.text!r}")
        return None

    def constants(self) -> dict[str, np.ndarray]:
        self.expect("constants")
        self.expect("{")
        constants: dict[str, np.ndarray] = {}
        while not self.accept("}"):
            symbol = self.expect_kind("symbol", "a constant such as @w0")
            self.expect(":")
            tensor_type = self.tensor_type()
            self.expect("=")
            if symbol.text[1:] in constants:
                raise self.error(symbol, f"constant {symbol.text} is defined twice")
            constants[symbol.text[1:]] = self.constant_data(symbol, tensor_type)
        return constants

    def constant_data(self, symbol: Token, tensor_type: TensorType) -> np.ndarray:
        token = self.peek()
        if token.text == "<":
            raise self.error(
                token,
                f"the data of {symbol.text} was elided when this text was printed;"
                " print the graph with all constants to read it back",
            )
        if self.accept("splat"):
            self.expect("(")
            scalar = self.attr_value()
            self.expect(")")
            return _array([scalar] * tensor_type.numel, tensor_type, self, token)
        self.expect("[")
        items = self.comma_separated("]", self.attr_value)
        if len(items) != tensor_type.numel:
            raise self.error(
                token, f"{symbol.text} : {tensor_type} needs {tensor_type.numel} elements, found {len(items)}"
            )
        return _array(items, tensor_type, self, token)

    # -- building ----------------------------------------------------------------------------

    def define(self, values: dict[str, Value], token: Token, value: Value) -> None:
        if token.text[1:] in values:
            raise self.error(token, f"{token.text} is defined twice (values are SSA)")
        values[token.text[1:]] = value

    def use(self, values: dict[str, Value], token: Token) -> Value:
        try:
            return values[token.text[1:]]
        except KeyError:
            raise self.error(token, f"{token.text} is used before it is defined") from None

    def build_node(self, statement: tuple, values: dict[str, Value], constants: dict[str, np.ndarray]) -> Node:
        results, op_token, operands, raw_attrs, declared, source = statement
        try:
            definition = get_op(op_token.text)
            attrs = definition.normalize_attrs(raw_attrs)
            inputs = tuple(self.use(values, token) for token in operands)
            if definition.name == "const":
                name = attrs["name"]
                if name not in constants:
                    raise self.error(op_token, f"constant @{name} is not in the constants section")
                array = constants[name]
                inferred = (TensorType(array.shape, DType.from_numpy(array.dtype)),)
            else:
                inferred = definition.infer_types(tuple(v.type for v in inputs), attrs)
        except ParseError:
            raise
        except KilnError as error:
            raise self.error(op_token, str(error)) from None
        if tuple(declared) != inferred:
            listed = ", ".join(str(t) for t in declared)
            found = ", ".join(str(t) for t in inferred)
            raise self.error(op_token, f"{op_token.text} is declared to give {listed} but gives {found}")
        if len(results) != len(inferred):
            raise self.error(results[0], f"{op_token.text} gives {len(inferred)} result(s), {len(results)} named")
        outputs = tuple(
            Value(t, token.text[1:] if definition.name == "const" else "") for t, token in zip(inferred, results)
        )
        for token, value in zip(results, outputs):
            self.define(values, token, value)
        return Node(definition.name, inputs, attrs, outputs, source)


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eEin") else int(text)


def _array(items: list, tensor_type: TensorType, parser: _Parser, token: Token) -> np.ndarray:
    dtype = tensor_type.dtype
    if dtype == DType.bool:
        if not all(isinstance(v, bool) for v in items):
            raise parser.error(token, "a bool constant holds true and false only")
    elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        raise parser.error(token, f"a {dtype} constant holds numbers only")
    elif dtype.is_integer and not all(isinstance(v, int) for v in items):
        raise parser.error(token, f"a {dtype} constant holds integers only")
    try:
        # Through f64 for floats: every f32/f16/bf16 value and its shortest text are exact there.
        wide = np.array(items, dtype=np.float64 if dtype.is_float else object)
        array = wide.astype(dtype.numpy)
    except (OverflowError, ValueError) as error:
        raise parser.error(token, f"constant data does not fit {dtype}: {error}") from None
    if dtype.is_integer and not all(int(a) == v for a, v in zip(array.tolist(), items)):
        raise parser.error(token, f"constant data does not fit {dtype}")
    return array.reshape(tensor_type.shape)


def parse_graph(text: str) -> Graph:
    """The graph that `text` (as printed by `ir.printer.print_graph`) describes."""
    return _Parser(text).graph()
