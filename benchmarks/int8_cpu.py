"""int8 on the CPU target: accuracy and latency of `compile(..., precision="int8-weight" |
"int8-dynamic" | "int8-static")` beside fp32 Kiln, ONNX Runtime fp32 and ONNX Runtime's own
`quantize_dynamic` of the same model (issue 10), as markdown tables.

    .venv/bin/python benchmarks/int8_cpu.py                   # OCR, encoder, GPT block, BERT layer, GEMM; 2 threads
    .venv/bin/python benchmarks/int8_cpu.py --cases ocr --threads 1 --quick

- `ocr`: the TRAINED PP-OCRv4 recognizer (.cache/models, `scripts/fetch_models.py`) on REAL inputs,
  the rendered text lines of `tests/models/ocr.py`: lines read identically to the fp32 model, per-frame
  top-1 agreement and the minimum cosine of the output rows against fp32 Kiln. Static calibration
  uses other rendered lines (`CALIBRATION`), never the measured ones.
- `encoder`: the model tests' transformer encoder layer (RANDOM weights): cosine, max abs error and
  top-1 agreement along the last axis against torch fp32.
- `gpt`: the model tests' GPT-2 block (`GPTBlock`: pre-norm causal attention, GELU MLP) at GPT-2
  small's size, 768 wide, 12 heads, batch 1, sequence 128, RANDOM weights; the columns of `bert`.
- `bert`: a BERT-base-sized encoder layer (hidden 768, 12 heads, feed-forward 3072, GELU, post-norm) and a
  32-class token head, batch 1, sequence 128, RANDOM weights (no trained BERT is available offline):
  each Kiln mode, ONNX Runtime fp32 and `quantize_dynamic`, and Kiln compiling ONNX Runtime's own
  `quantize_dynamic` and `quantize_static` (QDQ) models (`passes.qdq`); against torch fp32.
- `gemm`: 1024^3 on one thread, int8 (`matmul_integer`: s8 x s8 with i32 accumulation, the int8 GEMM of
  `backends.lowering.templates_quant`, `vpdpbusd` on AVX-512 VNNI) beside Kiln's f32 GEMM. Under
  KILN_CPU_ISA=avx2 both are AVX2 code (the int8 GEMM on AVX-VNNI's ymm `vpdpbusd` where the host has it),
  and KILN_CPU_ISA=avx2-novnni measures AVX2 without it (`vpmaddwd` on bytes widened to i16).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import compiler  # noqa: E402
from benchmarks.common import FULL, QUICK, export_onnx, measure, ort_session_options, quiet  # noqa: E402
from ir import DType, GraphBuilder  # noqa: E402
from runtime.cpu import ISA_ENVIRONMENT_VARIABLE  # noqa: E402

MODES = ("int8-weight", "int8-dynamic", "int8-static")
CALIBRATION = ("calibration line one", "Kiln 0123456789", "abc XYZ def", "quantized model")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def constants_as_initializers(model: bytes) -> bytes:
    """The model with its Constant nodes' tensors moved to initializers: ONNX Runtime's quantizer only
    quantizes weights that are initializers (PP-OCR's are Constant nodes)."""
    import onnx

    proto = onnx.load_from_string(model)
    kept = []
    for node in proto.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            proto.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    return proto.SerializeToString()


def ort_quantized(model: bytes, op_types: list[str] | None = None) -> bytes:
    """ONNX Runtime's `quantize_dynamic` (int8 weights, uint8 activations per tensor at run time) of
    `op_types` (None: every op it can, convolutions included)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as directory:
        source, target = Path(directory) / "f32.onnx", Path(directory) / "int8.onnx"
        source.write_bytes(constants_as_initializers(model))
        with quiet():
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=op_types)
        return target.read_bytes()


def ort_session(model: bytes, threads: int):
    import onnxruntime

    session = onnxruntime.InferenceSession(model, ort_session_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _row(name: str, timing, base_s: float, cells: list[str]) -> str:
    return f"| {name} | " + " | ".join(cells) + f" | {timing.median_s * 1e3:.2f} | {base_s / timing.median_s:.2f}x |"


def ocr(threads: int, budget) -> list[str]:
    ocr_module = _load("kiln_ocr", ROOT / "tests/models/ocr.py")
    path = ROOT / ".cache/models/ch_PP-OCRv4_rec_infer.onnx"
    if not path.exists():
        return [f"(no {path.name}: run scripts/fetch_models.py)"]
    alphabet = ocr_module.characters(path)
    lines = [ocr_module.render_line(text) for text in ocr_module.LINES]
    calibration = [(ocr_module.render_line(text),) for text in CALIBRATION]
    runners = {"Kiln fp32": compiler.compile(str(path), (lines[0],), target="cpu", threads=threads)}
    reports = {}
    for mode in MODES:
        compiled = compiler.compile(
            str(path), (lines[0],), target="cpu", threads=threads, precision=mode,
            calibration=calibration if mode == "int8-static" else None,
        )  # fmt: skip
        runners[f"Kiln {mode}"], reports[mode] = compiled, compiled.stats.get("quantization")
    model = path.read_bytes()
    runners["ORT fp32"] = ort_session(model, threads)
    runners["ORT quantize_dynamic (MatMul only)"] = ort_session(ort_quantized(model, ["MatMul", "Gemm"]), threads)
    runners["ORT quantize_dynamic (all)"] = ort_session(ort_quantized(model), threads)
    reference = [np.asarray(runners["Kiln fp32"](x))[0] for x in lines]
    base = None
    out = [
        f"PP-OCRv4 recognizer (trained), {len(lines)} rendered lines, {threads} thread(s); against fp32 Kiln",
        "",
        "| model | lines read identically | per-frame top-1 | min cosine | latency ms | speed-up vs Kiln fp32 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in runners.items():
        logits = [np.asarray(run(x))[0] for x in lines]
        read = sum(ocr_module.decode(lg, alphabet) == text for lg, text in zip(logits, ocr_module.LINES))
        top1 = np.mean([np.mean(lg.argmax(-1) == r.argmax(-1)) for lg, r in zip(logits, reference)])
        worst = min(cosine(lg[t], r[t]) for lg, r in zip(logits, reference) for t in range(r.shape[0]))
        timing = measure(lambda run=run: run(lines[0]), budget)
        base = base or timing.median_s
        out.append(_row(name, timing, base, [f"{read}/{len(lines)}", f"{top1:.4f}", f"{worst:.5f}"]))
    for mode, report in reports.items():
        if report is not None:
            out.append(f"\n{mode}: {len(report.quantized)} contraction(s) int8, {len(report.kept)} kept in float")
    return out


def transformer(case: str, threads: int, budget) -> list[str]:
    models = _load("kiln_reference_models", ROOT / "tests/models/models.py")
    module, inputs = models.MODELS[case]()
    return compare(case, module, inputs, threads, budget)


def compare(case: str, module, inputs, threads: int, budget, ort_models_in_kiln: bool = False) -> list[str]:
    """Kiln fp32 and each int8 mode, ONNX Runtime fp32 and quantize_dynamic (and, with
    `ort_models_in_kiln`, Kiln compiling ORT's quantize_dynamic and QDQ models) against torch fp32."""
    import torch

    x = inputs[0]
    with torch.no_grad():
        expected = module(*inputs).numpy()
    generator = torch.Generator().manual_seed(7)
    calibration = [(torch.randn(x.shape, generator=generator),) for _ in range(4)]
    runners = {"Kiln fp32": compiler.compile(module, inputs, target="cpu", threads=threads)}
    for mode in MODES:
        runners[f"Kiln {mode}"] = compiler.compile(
            module, inputs, target="cpu", threads=threads, precision=mode,
            calibration=calibration if mode == "int8-static" else None,
        )  # fmt: skip
    # What ORT's quantize_dynamic does: every linear, the model's first and last too (Kiln's policy
    # keeps a first contraction that reads the input, and a last one that makes the output, in float).
    runners["Kiln int8-dynamic, ends too"] = compiler.compile(
        module, inputs, target="cpu", threads=threads, precision="int8-dynamic", keep_ends=False
    )
    model = export_onnx(module, inputs)
    dynamic = ort_quantized(model)
    runners["ORT fp32"] = ort_session(model, threads)
    runners["ORT quantize_dynamic"] = ort_session(dynamic, threads)
    if ort_models_in_kiln:
        qdq = ort_quantized_static(model, [c[0].numpy() for c in calibration])
        runners["ORT quantize_static (QDQ)"] = ort_session(qdq, threads)
        runners["Kiln on ORT's quantize_dynamic model"] = compiler.compile(dynamic, target="cpu", threads=threads)
        runners["Kiln on ORT's QDQ model"] = compiler.compile(qdq, target="cpu", threads=threads)
    base = None
    out = [
        f"{case} (RANDOM weights), input {list(x.shape)}, {threads} thread(s); against torch fp32",
        "",
        "| model | cosine | max abs | top-1 (last axis) | latency ms | speed-up vs Kiln fp32 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in runners.items():
        got = np.asarray(run(x.numpy()))
        top1 = np.mean(got.argmax(-1) == expected.argmax(-1))
        timing = measure(lambda run=run: run(x.numpy()), budget)
        base = base or timing.median_s
        cells = [f"{cosine(got, expected):.6f}", f"{np.abs(got - expected).max():.3g}", f"{top1:.4f}"]
        out.append(_row(name, timing, base, cells))
    return out


def ort_quantized_static(model: bytes, calibration: list[np.ndarray]) -> bytes:
    """ONNX Runtime's `quantize_static` in QDQ format (int8 weights per channel, activations from the
    min-max of `calibration`)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    name = onnx.load_from_string(model).graph.input[0].name
    sets = iter([{name: x} for x in calibration])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(sets, None)

    with tempfile.TemporaryDirectory() as directory:
        source, target = Path(directory) / "f32.onnx", Path(directory) / "qdq.onnx"
        source.write_bytes(model)
        with quiet():
            quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
        return target.read_bytes()


def bert(threads: int, budget) -> list[str]:
    """A BERT-base encoder layer and a token head (random weights), batch 1, sequence 128."""
    import torch
    from torch import nn

    class EncoderWithHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(
                d_model=768, nhead=12, dim_feedforward=3072, dropout=0.0, activation="gelu", batch_first=True
            )
            self.head = nn.Linear(768, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.layer(x))

    torch.manual_seed(0)
    module = EncoderWithHead().eval()
    inputs = (torch.randn((1, 128, 768), generator=torch.Generator().manual_seed(1)),)
    return compare("BERT-base encoder layer + token head", module, inputs, threads, budget, ort_models_in_kiln=True)


def gpt(threads: int, budget) -> list[str]:
    """The model tests' GPT-2 block at GPT-2 small's width (random weights), batch 1, sequence 128."""
    import torch

    models = _load("kiln_reference_models", ROOT / "tests/models/models.py")
    torch.manual_seed(0)
    module = models.GPTBlock(width=768, heads=12).eval()
    inputs = (torch.randn((1, 128, 768), generator=torch.Generator().manual_seed(1)),)
    return compare("GPT-2-small block", module, inputs, threads, budget, ort_models_in_kiln=True)


def gemm(budget, n: int = 1024) -> list[str]:
    rng = np.random.default_rng(0)
    graphs = {}
    for dtype in (DType.f32, DType.i8):
        b = GraphBuilder("gemm")
        a = b.input("a", (n, n), dtype)
        if dtype == DType.f32:
            graphs[dtype] = b.build(b.matmul(a, b.constant(rng.standard_normal((n, n)).astype(np.float32), "w")))
        else:
            w = b.constant(rng.integers(-127, 128, (n, n)).astype(np.int8), "w")
            graphs[dtype] = b.build(b.matmul_integer(a, w))
    isa = os.environ.get(ISA_ENVIRONMENT_VARIABLE) or "native"
    header = f"GEMM {n}^3, 1 thread, {ISA_ENVIRONMENT_VARIABLE}={isa}"
    out = [header, "", "| kind | ms | GOP/s | vs f32 |", "| --- | --- | --- | --- |"]
    base = None
    for dtype, graph in graphs.items():
        compiled = compiler.compile(graph, target="cpu", threads=1)
        a = (
            rng.standard_normal((n, n)).astype(np.float32)
            if dtype == DType.f32
            else rng.integers(-128, 128, (n, n)).astype(np.int8)
        )
        timing = measure(lambda compiled=compiled, a=a: compiled(a), budget)
        base = base or timing.median_s
        name = "f32 matmul" if dtype == DType.f32 else "int8 matmul_integer (dot4_u8s8 GEMM, i32 accumulation)"
        rate = 2 * n**3 / timing.median_s / 1e9
        out.append(f"| {name} | {timing.median_s * 1e3:.1f} | {rate:.1f} | {base / timing.median_s:.2f}x |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="ocr,encoder,gpt,bert,gemm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="shorter timing boxes")
    args = parser.parse_args()
    budget = QUICK if args.quick else FULL
    cases = args.cases.split(",")
    sections = []
    if "ocr" in cases:
        sections.append(ocr(args.threads, budget))
    if "encoder" in cases:
        sections.append(transformer("transformer_encoder_layer", args.threads, budget))
    if "gpt" in cases:
        sections.append(gpt(args.threads, budget))
    if "bert" in cases:
        sections.append(bert(args.threads, budget))
    if "gemm" in cases:
        sections.append(gemm(budget))
    print("\n\n".join("\n".join(section) for section in sections))


if __name__ == "__main__":
    main()
