"""The baseline of bench/index.py: the plain script a user writes from the DINOv2 model card.

One image at a time: open with Pillow, ``AutoImageProcessor`` from the model's own directory,
an fp32 ``AutoModel`` forward under ``torch.no_grad()``, the CLS token
(``last_hidden_state[:, 0]``) L2-normalised, and one upsert per image into a fresh Qdrant Edge
shard (``qdrant_edge`` used directly). torch keeps its default threads.

    python bench/baseline_index.py --model DIR_OR_HUB_ID --data FOLDER --store NEW_DIR

It prints one JSON line with its own timings (model load, loop); bench/index.py times the
whole process from outside.
"""

import argparse
import json
import time
import uuid
from pathlib import Path

import qdrant_edge as qe
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def main() -> None:
    """Embed every image of the folder, one at a time, into a new shard."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    started = time.perf_counter()
    processor = AutoImageProcessor.from_pretrained(args.model)  # type: ignore[no-untyped-call]
    model = AutoModel.from_pretrained(args.model, dtype=torch.float32).to(args.device).eval()
    config = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=model.config.hidden_size, distance=qe.Distance.Cosine)
    )
    shard = qe.EdgeShard.create(str(args.store), config)
    files = sorted(
        path
        for path in args.data.rglob("*")
        if path.suffix.lower() in SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(args.data).parts)
    )
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loaded = time.perf_counter()

    for path in files:
        image = Image.open(path).convert("RGB")
        inputs = processor(images=image, return_tensors="pt").to(args.device)
        with torch.no_grad():
            outputs = model(**inputs)
        embedding = torch.nn.functional.normalize(outputs.last_hidden_state[:, 0], dim=-1)[0]
        point_id = str(uuid.uuid5(uuid.NAMESPACE_URL, str(path)))
        point = qe.Point(point_id, embedding.tolist(), {"path": str(path)})
        shard.update(qe.UpdateOperation.upsert_points([point]))
    shard.flush()

    finished = time.perf_counter()
    points = int(shard.count(qe.CountRequest(exact=True)))
    shard.close()
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    print(
        json.dumps(
            {
                "images": len(files),
                "points": points,
                "load_s": round(loaded - started, 3),
                "loop_s": round(finished - loaded, 3),
                "threads": torch.get_num_threads(),
                "processor": type(processor).__name__,
                "gpu_alloc_mib": None if peak is None else round(peak, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
