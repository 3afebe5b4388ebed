"""Settings: DINOSEEK_* environment variables, overridden by explicit values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dinoseek.settings import DEFAULT_MODEL, Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MODEL", "DEVICE", "COLLECTION", "DATA_DIR", "QDRANT_URL"):
        monkeypatch.delenv(f"DINOSEEK_{name}", raising=False)
    settings = Settings()
    assert settings.model == DEFAULT_MODEL == "facebook/dinov2-base"
    assert settings.device == "auto"
    assert settings.dtype == "auto"
    assert settings.collection == "images"
    assert settings.data_dir == Path("./dinoseek-data")
    assert settings.max_image_pixels == 40_000_000
    assert not settings.uses_server


def test_environment_then_explicit_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINOSEEK_MODEL", "facebook/dinov2-small")
    monkeypatch.setenv("DINOSEEK_COLLECTION", "photos")
    monkeypatch.setenv("DINOSEEK_QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("DINOSEEK_API_KEY", "s3cret")
    settings = Settings()
    assert settings.model == "facebook/dinov2-small"
    assert settings.collection == "photos"
    assert settings.uses_server
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert Settings(collection="other").collection == "other"


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINOSEEK_QDRANT_URL", "")
    monkeypatch.setenv("DINOSEEK_API_KEY", "")
    monkeypatch.setenv("DINOSEEK_BATCH_SIZE", "")
    settings = Settings()
    assert not settings.uses_server
    assert settings.api_key is None  # an empty key must not look like a configured one
    assert settings.batch_size is None
    assert Settings(api_key="").api_key is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("collection", "../x"), ("device", "tpu"), ("max_image_pixels", 0), ("dtype", "int8")],
)
def test_invalid_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})  # type: ignore[arg-type]
