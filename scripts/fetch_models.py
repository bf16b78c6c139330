"""Fetch the trained models Kiln's tests and benchmarks use, from the package registry.

Nothing can be fetched from a model hub here, but some PyPI packages carry trained weights:
rapidocr-onnxruntime 1.4.4 ships PaddleOCR's PP-OCR models as ONNX files (a MobileNet
classifier, a DBNet text detector, and an SVTR recognizer with attention blocks). This script
downloads that one wheel with pip (no dependencies, nothing installed), checks its hash, and
extracts the .onnx files into `.cache/models/` (or $KILN_MODELS_DIR). It is idempotent: files
already present with the right hash are kept.

    python scripts/fetch_models.py
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
WHEEL_SHA256 = "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
MODELS = {
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    "ch_PP-OCRv4_det_infer.onnx": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    "ch_PP-OCRv4_rec_infer.onnx": "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
}


def models_dir() -> Path:
    default = Path(__file__).resolve().parent.parent / ".cache" / "models"
    return Path(os.environ.get("KILN_MODELS_DIR", default))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _has(path: Path, digest: str) -> bool:
    return path.exists() and _sha256(path) == digest


def fetch(target: Path) -> None:
    missing = [name for name, digest in MODELS.items() if not _has(target / name, digest)]
    if not missing:
        return
    with tempfile.TemporaryDirectory() as scratch:
        spec = WHEEL.split("-")[0] + "==" + WHEEL.split("-")[1]
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*pip, "-d", scratch, spec], check=True)
        wheel = Path(scratch) / WHEEL
        if _sha256(wheel) != WHEEL_SHA256:
            raise SystemExit(f"{WHEEL}: unexpected sha256 {_sha256(wheel)}; not extracting it")
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for name in missing:
                (target / name).write_bytes(archive.read(f"rapidocr_onnxruntime/models/{name}"))
                if _sha256(target / name) != MODELS[name]:
                    raise SystemExit(f"{name}: unexpected sha256 after extraction")
    print(f"fetched {len(missing)} model(s) into {target}")


if __name__ == "__main__":
    fetch(models_dir())
