"""`irdump`: print a model's IR, verified, with a summary.

    irdump model.kiln                 # parse, verify and print a text-form graph
    irdump model.kiln --summary-only  # only the counts

Later issues add ONNX files, `module.py:factory` torch models, and the IR after each pass.
Exit status: 0 when the graph is valid, 1 when it is not (with the error on stderr), 2 for a
bad command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compiler.errors import KilnError
from ir import parse_graph, print_graph, verify
from ir.summary import summarize


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="irdump", description="Print a model's Kiln IR, verified, with a summary.")
    parser.add_argument("model", help="a .kiln text-form graph")
    parser.add_argument("--summary-only", action="store_true", help="print only the summary line")
    parser.add_argument(
        "--max-constant-elements",
        type=int,
        default=None,
        metavar="N",
        help="elide the data of constants with more than N elements (the output then no longer parses)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = Path(args.model)
    if path.suffix != ".kiln":
        print(f"irdump: {path}: only .kiln text-form graphs are supported so far", file=sys.stderr)
        return 2
    try:
        text = path.read_text()
    except OSError as error:
        print(f"irdump: cannot read {path}: {error.strerror}", file=sys.stderr)
        return 2
    try:
        graph = parse_graph(text)
        verify(graph)
    except KilnError as error:
        print(f"irdump: {path}: {error}", file=sys.stderr)
        return 1
    if not args.summary_only:
        sys.stdout.write(print_graph(graph, max_constant_elements=args.max_constant_elements))
        print()
    print(f"# {summarize(graph)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
