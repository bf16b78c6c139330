"""Attribute normalisation: one canonical Python form per kind, so attributes hash and compare."""

import numpy as np
import pytest

from ir import Attr, Attributes, AttrKind, DType, OpAttributeError
from ir.attributes import normalize_attributes

DECLARED = (
    Attr("axis", AttrKind.INT, -1),
    Attr("eps", AttrKind.FLOAT, 1e-5),
    Attr("keep", AttrKind.BOOL, False),
    Attr("mode", AttrKind.STR, "a", choices=("a", "b")),
    Attr("shape", AttrKind.INTS),
    Attr("scales", AttrKind.FLOATS, ()),
    Attr("dtype", AttrKind.DTYPE, DType.f32),
    Attr("scale", AttrKind.FLOAT, None, optional=True),
)


def test_defaults_are_filled_and_values_normalised():
    attrs = normalize_attributes("op", DECLARED, {"shape": [np.int64(2), 3], "eps": 1, "dtype": "f16"})
    assert dict(attrs) == {
        "axis": -1,
        "eps": 1.0,
        "keep": False,
        "mode": "a",
        "shape": (2, 3),
        "scales": (),
        "dtype": DType.f16,
        "scale": None,
    }
    assert isinstance(attrs["eps"], float) and isinstance(attrs["shape"][0], int)


def test_attributes_hash_and_compare_by_value():
    a = normalize_attributes("op", DECLARED, {"shape": [1, 2]})
    b = normalize_attributes("op", DECLARED, {"shape": (1, 2), "axis": -1})
    assert a == b and hash(a) == hash(b)
    assert a != normalize_attributes("op", DECLARED, {"shape": (2, 1)})
    assert list(Attributes({"b": 1, "a": 2})) == ["a", "b"]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "'shape' \\(ints\\) is required"),
        ({"shape": (1,), "axis": 1.5}, "'axis' expects int, got 1.5"),
        ({"shape": (1,), "axis": True}, "'axis' expects int"),
        ({"shape": (1,), "keep": 1}, "'keep' expects bool"),
        ({"shape": (1,), "mode": "c"}, "must be one of 'a', 'b'"),
        ({"shape": "12"}, "'shape' expects ints"),
        ({"shape": (1,), "eps": "small"}, "'eps' expects float"),
        ({"shape": (1,), "dtype": "f8"}, "'dtype' expects dtype"),
        ({"shape": (1,), "colour": 3}, "unknown attribute\\(s\\) colour"),
    ],
)
def test_bad_attributes_are_named(given, message):
    with pytest.raises(OpAttributeError, match=message):
        normalize_attributes("op", DECLARED, given)


def test_is_default_tells_negative_zero_and_nan_apart():
    eps = Attr("eps", AttrKind.FLOAT, 0.0)
    assert eps.is_default(0.0, "op") and not eps.is_default(-0.0, "op")
    nan = Attr("v", AttrKind.FLOAT, float("nan"))
    assert nan.is_default(float("nan"), "op")
    assert not Attr("shape", AttrKind.INTS).is_default((), "op")  # required: always printed
