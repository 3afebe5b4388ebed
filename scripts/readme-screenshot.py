"""Make the pictures of the page, docs/search-page.png (in the README) and
docs/labelling-page.png (in docs/api-and-page.md), from the screenshots the browser tests take
(run `python -m pytest tests/browser` first)."""

from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "browser"
WIDTH = 960

# (screenshot, picture, the most of the screenshot's height kept, in its pixels)
PICTURES = [
    ("4-pca.png", "search-page.png", None),
    ("labelling-4-predicted.png", "labelling-page.png", 1170),
]

for source, target, most in PICTURES:
    shot = Image.open(SHOTS / source).convert("RGB")
    if most is not None and shot.height > most:
        shot = shot.crop((0, 0, shot.width, most))
    height = round(shot.height * WIDTH / shot.width)
    small = shot.resize((WIDTH, height), Image.Resampling.LANCZOS)
    small = small.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path = ROOT / "docs" / target
    path.parent.mkdir(exist_ok=True)
    small.save(path, optimize=True)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)")
