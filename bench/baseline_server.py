"""The baseline of bench/query.py: the search server a user writes around the model card.

A FastAPI app whose ``async`` handler does all the work inline, so uvicorn answers one request
at a time: open the upload with Pillow, ``AutoImageProcessor``, an fp32 ``AutoModel`` forward
under ``torch.no_grad()``, the CLS token L2-normalised, and the 10 nearest points of a Qdrant
Edge shard (``qdrant_edge`` used directly), payloads included.

    python bench/baseline_server.py --model DIR_OR_HUB_ID --shard SHARD_DIR --port 8001

(No ``from __future__ import annotations`` here: FastAPI reads the handler's annotations.)
"""

import argparse
import io
from pathlib import Path
from typing import Any

import qdrant_edge as qe
import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from transformers import AutoImageProcessor, AutoModel


def build_app(model_id: str, shard_dir: Path, device: str) -> FastAPI:
    """The app: /health and POST /search (multipart field ``image``)."""
    processor = AutoImageProcessor.from_pretrained(model_id)  # type: ignore[no-untyped-call]
    model = AutoModel.from_pretrained(model_id, dtype=torch.float32).to(device).eval()
    shard = qe.EdgeShard.load(str(shard_dir))
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/search")
    async def search(image: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        data = await image.read()
        picture = Image.open(io.BytesIO(data)).convert("RGB")
        inputs = processor(images=picture, return_tensors="pt").to(device)
        with torch.no_grad():
            outputs = model(**inputs)
        embedding = torch.nn.functional.normalize(outputs.last_hidden_state[:, 0], dim=-1)[0]
        request = qe.QueryRequest(
            query=qe.Query.Nearest(embedding.tolist()), limit=10, with_payload=True
        )
        hits = shard.query(request)
        return {
            "results": [
                {"id": str(hit.id), "score": hit.score, "payload": dict(hit.payload or {})}
                for hit in hits
            ]
        }

    return app


def main() -> None:
    """Serve on 127.0.0.1 until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--shard", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    app = build_app(args.model, args.shard, args.device)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
