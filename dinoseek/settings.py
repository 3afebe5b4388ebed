"""Settings: one pydantic-settings object, read from ``DINOSEEK_*`` variables.

Build it once at the edge of an app (CLI command, server start) and pass it on. Command-line
flags override the environment by being passed as keyword arguments::

    settings = Settings(**{name: value for name, value in flags.items() if value is not None})
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "facebook/dinov2-base"
COLLECTION_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

DeviceName = Literal["auto", "cpu", "cuda"]
CompileMode = Literal["off", "default", "max-autotune", "reduce-overhead"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
QuantizationName = Literal["none", "int8"]


def validate_collection_name(name: str, *, kind: str = "collection") -> str:
    """Return ``name`` if it is a valid collection (or probe) name, else raise ``ValueError``.

    Names become file and directory names in the embedded store, so they are restricted to
    letters, digits, ``_``, ``.`` and ``-`` (at most 64 characters, not starting with a symbol).
    """
    if not COLLECTION_NAME_PATTERN.match(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


class Settings(BaseSettings):
    """Everything dinoseek can be configured with. Field docs double as ``--help`` text."""

    # An empty variable (DINOSEEK_API_KEY=) means "not set", never an empty key. No float
    # setting is NaN or infinite (NaN passes every bound: each comparison with it is false).
    model_config = SettingsConfigDict(
        env_prefix="DINOSEEK_",
        extra="ignore",
        frozen=True,
        env_ignore_empty=True,
        allow_inf_nan=False,
    )

    model: str = Field(
        DEFAULT_MODEL, description="DINOv2 model: a Hugging Face hub id or a local directory"
    )
    device: DeviceName = Field("auto", description="auto (cuda when available), cpu or cuda")
    dtype: DtypeName = Field(
        "auto", description="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16, float16"
    )
    data_dir: Path = Field(Path("./dinoseek-data"), description="directory of the embedded store")
    qdrant_url: str | None = Field(
        None, description="Qdrant server URL; when set, the server is used instead of data_dir"
    )
    qdrant_api_key: SecretStr | None = Field(None, description="API key of the Qdrant server")
    api_key: SecretStr | None = Field(None, description="API key the search service requires")
    collection: str = Field("images", description="collection name")
    duplicate_threshold: float = Field(
        0.95,
        gt=0,
        le=1,
        description="similarity at or above which a query's best hit is reported as already "
        "there (near_duplicate), where the collection's last dedup gave no threshold",
    )
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="largest image accepted, in pixels (checked from the header)"
    )
    max_upload_bytes: int = Field(
        20 * 1024 * 1024, gt=0, description="largest upload the search service accepts, in bytes"
    )
    max_file_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="largest file the indexer reads, in bytes"
    )
    max_snapshot_bytes: int = Field(
        256 * 1024**3, gt=0, description="largest snapshot a restore unpacks, in bytes"
    )
    decode_timeout_s: float = Field(
        60.0, gt=0, description="time the indexer gives one file to be read and decoded, in s"
    )
    batch_size: int | None = Field(
        None, gt=0, description="images per forward pass (default: chosen for the device)"
    )
    compile: CompileMode = Field(
        "off",
        description="torch.compile the model: default or max-autotune (throughput), "
        "reduce-overhead (CUDA graphs: low-latency queries); slower start",
    )
    max_queue: int = Field(
        256,
        gt=0,
        description="queries past their upload the service holds before answering 503 (overload)",
    )
    max_inflight_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description="upload bytes the queries past their upload hold at once before answering 503",
    )
    max_reading_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description="upload bytes still arriving the service accepts at once before answering 503",
    )
    min_upload_rate: int = Field(
        10_000,
        ge=0,
        description="bytes/s an upload must average after its first 2 s, else 408 (0: no minimum)",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="deadline of a query (upload, decode, model, search), in seconds"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="time a connection has to send its request headers, in seconds"
    )
    max_connections: int = Field(
        1024, gt=0, description="open connections the server accepts before answering 503"
    )
    max_client_connections: int = Field(
        128,
        ge=0,
        description="open connections from one client address before answering 429 "
        "(0: no cap, e.g. behind a proxy)",
    )
    shutdown_timeout_s: float = Field(
        10.0, gt=0, description="time requests in flight get to finish at shutdown, in seconds"
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="origins allowed by CORS (JSON list; off when empty)"
    )
    qdrant_shards: int | None = Field(
        None, gt=0, description="shards of a new collection on a Qdrant server or cluster"
    )
    qdrant_replication_factor: int | None = Field(
        None, gt=0, description="replicas of each shard of a new collection (cluster)"
    )
    qdrant_write_consistency: int | None = Field(
        None, gt=0, description="replicas that must acknowledge a write (cluster)"
    )
    hnsw_m: int = Field(
        16, ge=4, le=128, description="HNSW links per vector of a new collection (recall, memory)"
    )
    hnsw_ef_construct: int = Field(
        100, ge=4, le=4096, description="HNSW build candidates of a new collection (recall, time)"
    )
    hnsw_ef: int = Field(
        256, ge=1, le=4096, description="HNSW candidates per search (recall, latency)"
    )
    quantization: QuantizationName = Field(
        "int8",
        description="int8: a new collection searches int8 copies of its vectors in memory, "
        "then rescores with the originals",
    )

    @field_validator("collection")
    @classmethod
    def _check_collection(cls, value: str) -> str:
        return validate_collection_name(value)

    @field_validator("qdrant_url")
    @classmethod
    def _empty_url_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("api_key", "qdrant_api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @property
    def uses_server(self) -> bool:
        """True when a Qdrant server is configured (server mode), False for the embedded store."""
        return self.qdrant_url is not None


def default_of(name: str) -> Any:
    """The default of setting ``name``: written once, in ``Settings``, and read from here by
    the option types and help texts that repeat it."""
    return Settings.model_fields[name].default
