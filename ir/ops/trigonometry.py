"""Trigonometric and hyperbolic functions beyond `sin`, `cos` and `tanh` (which live with the
other unary math in `ir.ops.elementwise`): tan, the inverse functions, and sinh/cosh with their
inverses. ONNX has each as an op; none decomposes onto the table without losing accuracy near
the edges of its domain, so each is declared as an elementwise op with its numpy reference.

Outside their domains they give nan (asin, acos of |x| > 1; acosh below 1; atanh beyond +-1 is
nan, at +-1 infinite), as numpy and torch do. FLOP counts are nominal, like exp's.
"""

from __future__ import annotations

import numpy as np

from ir.dtype import FLOAT_DTYPES
from ir.ops.elementwise import register_unary

# name -> (reference, doc)
_TRIGONOMETRY = {
    "tan": (np.tan, "tangent"),
    "asin": (np.arcsin, "inverse sine, in [-pi/2, pi/2]; nan outside [-1, 1]"),
    "acos": (np.arccos, "inverse cosine, in [0, pi]; nan outside [-1, 1]"),
    "atan": (np.arctan, "inverse tangent, in (-pi/2, pi/2)"),
    "sinh": (np.sinh, "hyperbolic sine"),
    "cosh": (np.cosh, "hyperbolic cosine"),
    "asinh": (np.arcsinh, "inverse hyperbolic sine"),
    "acosh": (np.arccosh, "inverse hyperbolic cosine; nan below 1"),
    "atanh": (np.arctanh, "inverse hyperbolic tangent; nan outside [-1, 1], infinite at -1 and 1"),
}

for _name, (_fn, _doc) in _TRIGONOMETRY.items():
    register_unary(_name, _fn, FLOAT_DTYPES, 4, doc=_doc)
