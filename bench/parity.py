"""Parity check: dinoseek's embeddings against the reference transformers pipeline.

The reference is what the model card does: ``AutoImageProcessor`` + ``AutoModel`` in float32
on the CPU, CLS token L2-normalised. dinoseek is its embedder as ``dinoseek.runtime`` loads it
(Pillow resize and crop, normalisation batched on the model's device, ``embed_pixels``) in
float32 on the CPU, and on whatever ``--device``/``--dtype`` is asked for as well.

Both get the same decoded RGB images, made by dinoseek's own decoder: the comparison is about
preprocessing and the model, not about decoding. The images vary: photo-like pictures of
several sizes and aspect ratios (landscape, portrait, square, panorama, tall, smaller than the
crop), a PNG with alpha, a palette PNG with transparency, a greyscale JPEG, a 16-bit PNG and
an EXIF-rotated JPEG.

For each configuration it prints the minimum and mean cosine between dinoseek and the
reference, and the mean cosine between different images under the reference (the check's
resolution: parity must be far closer to 1 than that). It exits 1 when a minimum is below the
threshold: 0.9999 for float32 on the CPU, 0.999 otherwise (``--threshold`` overrides both).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

CPU_FP32_THRESHOLD = 0.9999
OTHER_THRESHOLD = 0.999

COLUMNS: list[common.Column] = [
    ("model", "model", common.fmt_text),
    ("config", "dinoseek config", common.fmt_text),
    ("images", "images", common.fmt_text),
    ("min_cos", "min cosine", common.fmt_float(6)),
    ("mean_cos", "mean cosine", common.fmt_float(6)),
    ("max_gap", "max 1 - cosine", lambda v: "-" if v is None else f"{v:.1e}"),
    ("worst", "worst image", common.fmt_text),
    ("cross_cos", "different images", common.fmt_float(3)),
    ("threshold", "threshold", common.fmt_float(4)),
    ("verdict", "verdict", common.fmt_text),
]


@dataclass(frozen=True)
class Sample:
    """An encoded test image."""

    name: str
    data: bytes


def _encode(image: Any, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def make_samples() -> list[Sample]:
    """Varied real-looking images, encoded as files would be."""
    import numpy as np
    from PIL import Image

    from dinoseek.synthetic import CLASS_NAMES, draw_image

    def photo(seed: int, size: tuple[int, int]) -> Image.Image:
        return draw_image(random.Random(seed), CLASS_NAMES[seed % len(CLASS_NAMES)], size)

    samples = [
        Sample(f"photo-{w}x{h}.jpg", _encode(photo(i, (w, h)), "JPEG", quality=90))
        for i, (w, h) in enumerate(
            [(500, 375), (375, 500), (640, 480), (1024, 256), (120, 90), (64, 300), (300, 300)]
        )
    ]
    samples.append(Sample("photo-224x224.png", _encode(photo(7, (224, 224)), "PNG")))

    rgba = photo(8, (400, 300)).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 400, dtype=np.uint8), (300, 1))
    rgba.putalpha(Image.fromarray(alpha, mode="L"))
    samples.append(Sample("alpha-400x300.png", _encode(rgba, "PNG")))

    palette = photo(9, (320, 240)).quantize(colors=64)
    samples.append(Sample("palette-transparent.png", _encode(palette, "PNG", transparency=0)))

    samples.append(Sample("grey-500x375.jpg", _encode(photo(10, (500, 375)).convert("L"), "JPEG")))

    grey16 = (np.asarray(photo(11, (300, 200)).convert("L"), dtype=np.uint16) * 257).astype(
        np.uint16
    )
    samples.append(Sample("grey16-300x200.png", _encode(Image.fromarray(grey16), "PNG")))

    # Stored as 375x500 with EXIF orientation 6 (rotate 90° clockwise to display).
    upright = photo(12, (500, 375))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    samples.append(Sample("exif-rotated.jpg", _encode(stored, "JPEG", quality=92, exif=exif)))
    return samples


def reference_embeddings(model_id: str, images: list[Any]) -> tuple[Any, str]:
    """The model card's pipeline, fp32 on the CPU, one image at a time."""
    import torch
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(model_id)  # type: ignore[no-untyped-call]
    model = AutoModel.from_pretrained(model_id, dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        for image in images:
            inputs = processor(images=image, return_tensors="pt")
            cls = model(**inputs).last_hidden_state[:, 0]
            rows.append(torch.nn.functional.normalize(cls, dim=-1)[0].numpy())
    import numpy as np

    return np.stack(rows), type(processor).__name__


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options."""
    parser = argparse.ArgumentParser(
        prog="python bench/parity.py",
        description="dinoseek's embeddings against AutoImageProcessor + AutoModel (fp32 CPU).",
    )
    parser.add_argument(
        "--models",
        help="comma-separated: random:SIZE, a local model directory or a hub id [random:small]",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="a device to check besides fp32 on the CPU [cpu]",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="the dtype to check on --device [float32]",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="dinoseek's batch size [8]")
    parser.add_argument("--threshold", type=float, help="minimum cosine for every configuration")
    parser.add_argument("--out", type=Path, help="write parity.json here")
    parser.add_argument("--cache", type=Path, default=common.DEFAULT_CACHE, help="generated models")
    parser.add_argument("--quick", action="store_true", help="random:tiny (seconds, for CI)")
    args = parser.parse_args(argv)
    args.models = args.models or ("random:tiny" if args.quick else "random:small")
    return args


def check_model(
    spec: str, model_id: str, configs: list[tuple[str, str]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Compare every configuration with the reference on every sample."""

    import numpy as np

    from dinoseek.images import decode_image

    samples = make_samples()
    decoded = [decode_image(s.data, max_pixels=10**8, name=s.name).image for s in samples]
    reference, processor = reference_embeddings(model_id, decoded)
    similarity = reference @ reference.T
    cross = float(similarity[np.triu_indices(len(samples), 1)].mean())
    rows = []
    for device, dtype in configs:
        with common.open_embedder(model_id, device, dtype) as embedder:
            pixels = np.stack([embedder.preprocessing.to_pixels(image) for image in decoded])
            ours = np.concatenate(
                [
                    embedder.embed_pixels(pixels[i : i + args.batch_size])
                    for i in range(0, len(pixels), args.batch_size)
                ]
            )
            cosines = (ours.astype(np.float64) * reference.astype(np.float64)).sum(axis=1)
            threshold = args.threshold or (
                CPU_FP32_THRESHOLD if (device, dtype) == ("cpu", "float32") else OTHER_THRESHOLD
            )
            worst = int(cosines.argmin())
            rows.append(
                {
                    "model": spec,
                    "config": f"{device} {dtype}",
                    "images": len(samples),
                    "min_cos": float(cosines.min()),
                    "mean_cos": float(cosines.mean()),
                    "max_gap": float(1.0 - cosines.min()),
                    "worst": samples[worst].name,
                    "cross_cos": cross,
                    "threshold": threshold,
                    "verdict": "ok" if cosines.min() >= threshold else "FAIL",
                    "reference_processor": processor,
                    "per_image": {s.name: float(c) for s, c in zip(samples, cosines, strict=True)},
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the check; exit 1 if any configuration is below its threshold."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    info = common.machine_info(args.device)
    print(common.describe_machine(info))
    print(f"command: {common.command_line()}\n")
    configs = [("cpu", "float32")]
    if (args.device, args.dtype) != ("cpu", "float32"):
        configs.append((args.device, args.dtype))
    if args.device == "cuda" and not info.get("cuda_available"):
        print("error: --device cuda was asked for but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    cache: Path = args.cache.resolve()
    rows: list[dict[str, Any]] = []
    for spec in common.split_list(args.models):
        model_id = common.resolve_model(spec, cache)
        if os.path.isdir(model_id):
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        rows.extend(check_model(spec, model_id, configs, args))
    print(common.format_table(rows, COLUMNS))
    processors = sorted({row["reference_processor"] for row in rows})
    print(
        f"\nreference: {', '.join(processors)} + AutoModel, float32 on the CPU. 'different "
        "images': mean cosine between different images under the reference."
    )
    failed = [row for row in rows if row["verdict"] != "ok"]
    common.write_results(
        args.out,
        "parity",
        {
            "benchmark": "parity",
            "command": common.command_line(),
            "machine": info,
            "rows": rows,
            "passed": not failed,
        },
    )
    if failed:
        for row in failed:
            print(
                f"FAIL: {row['model']} {row['config']}: min cosine {row['min_cos']:.6f} < "
                f"{row['threshold']} (worst: {row['worst']})",
                file=sys.stderr,
            )
        return 1
    print("parity: every configuration is within its threshold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
