"""Real inputs for the trained PP-OCR recognizer (`scripts/fetch_models.py`): text lines rendered
with Pillow's built-in font at the model's input size, and the CTC decoding of its output, so a
precision change can be judged by whether the model still reads the same text.

    x = render_line("Kiln compiler 2026")        # f32 [1, 3, 48, 320], normalised to [-1, 1]
    text = decode(logits[0], characters(path))  # "Kiln compiler 2026"
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REC_SHAPE = (1, 3, 48, 320)

LINES = (
    "Kiln compiler 2026",
    "hello world",
    "matmul 1024x1024",
    "The quick brown fox",
    "int8 quantization",
    "softmax(QK^T)V",
    "layer norm eps 1e-5",
    "ResNet-50 top-1 76.1",
)
"""Lines the fp32 recognizer reads back exactly (checked against ONNX Runtime)."""


def render_line(text: str, shape: tuple[int, ...] = REC_SHAPE) -> np.ndarray:
    """`text` in black on white, as the recognizer's input: [1, 3, H, W] f32 in [-1, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    _, _, height, width = shape
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).text((6, 4), text, fill="black", font=ImageFont.load_default(size=34))
    pixels = np.asarray(image, np.float32) / 255.0
    return ((pixels - 0.5) / 0.5).transpose(2, 0, 1)[None].copy()


def characters(model_path: str | Path) -> list[str]:
    """The recognizer's alphabet, which paddle2onnx stored in the model's metadata: index 0 is
    CTC's blank, the last one a space."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    table = {p.key: p.value for p in model.metadata_props}["character"].split("\n")
    return ["", *table, " "]


def decode(logits: np.ndarray, alphabet: list[str]) -> str:
    """Greedy CTC decoding of [T, C] scores: the best class per frame, repeats merged, blanks dropped."""
    best = np.asarray(logits).argmax(-1)
    kept = [i for position, i in enumerate(best) if i != 0 and (position == 0 or i != best[position - 1])]
    return "".join(alphabet[i] for i in kept).strip()
