"""Make docs/search-page.png, the README's picture of the page, from the screenshot the
browser tests take (run `python -m pytest tests/browser` first)."""

from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "test-artifacts" / "browser" / "4-pca.png"
TARGET = ROOT / "docs" / "search-page.png"
WIDTH = 960

shot = Image.open(SOURCE).convert("RGB")
height = round(shot.height * WIDTH / shot.width)
small = shot.resize((WIDTH, height), Image.Resampling.LANCZOS)
small = small.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
TARGET.parent.mkdir(exist_ok=True)
small.save(TARGET, optimize=True)
print(f"wrote {TARGET.relative_to(ROOT)} ({TARGET.stat().st_size:,} bytes)")
