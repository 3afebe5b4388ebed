"""Make the pictures of the page, docs/search-page.png (in the README),
docs/labelling-page.png (in docs/api-and-page.md), docs/region-page.png and
docs/region-why.png (in docs/regions.md), from the screenshots the browser tests take (run
`python -m pytest tests/browser` first). Arguments: the pictures to make (all by default),
e.g. `python scripts/readme-screenshot.py region-page.png`."""

import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "browser"
WIDTH = 960

# (screenshot, picture, the most of the screenshot's height kept, in its pixels)
PICTURES = [
    ("4-pca.png", "search-page.png", None),
    ("labelling-4-predicted.png", "labelling-page.png", 1170),
    ("region-1-box-and-hits.png", "region-page.png", None),
    ("region-3b-why-dialog.png", "region-why.png", None),
]

wanted = set(sys.argv[1:]) or {target for _, target, _ in PICTURES}
for source, target, most in PICTURES:
    if target not in wanted:
        continue
    shot = Image.open(SHOTS / source).convert("RGB")
    if most is not None and shot.height > most:
        shot = shot.crop((0, 0, shot.width, most))
    width = min(WIDTH, shot.width)
    height = round(shot.height * width / shot.width)
    small = shot.resize((width, height), Image.Resampling.LANCZOS)
    small = small.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path = ROOT / "docs" / target
    path.parent.mkdir(exist_ok=True)
    small.save(path, optimize=True)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)")
