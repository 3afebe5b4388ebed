"""Domain errors of the dinoseek core.

Every error carries a machine-readable ``code`` and a human ``message`` that names the thing
that failed and, where there is one, the remedy. They are translated at the edges: the HTTP
API (``search_api.errors``) into a status and ``{"error": {"code", "message"}}``, and the
commands into a message on stderr and an exit code (``dinoseek.commandline``, the one CLI edge
that every command shares, whichever package defines it). Nothing else decides statuses or
exit codes.
"""

from __future__ import annotations


class DinoseekError(Exception):
    """Base class of every error the core raises on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigError(DinoseekError):
    """A setting or argument is invalid."""

    code = "invalid_config"


class ImageError(DinoseekError):
    """An image could not be read or decoded. ``code`` says why (see ``ImageErrorCode``)."""

    code = "invalid_image"


class ImageErrorCode:
    """The codes an ``ImageError`` can carry."""

    FILE_NOT_FOUND = "file_not_found"
    FILE_UNREADABLE = "file_unreadable"
    FILE_TOO_LARGE = "file_too_large"
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    CORRUPT_IMAGE = "corrupt_image"
    TRUNCATED_IMAGE = "truncated_image"
    TOO_MANY_PIXELS = "too_many_pixels"
    NOT_A_REGULAR_FILE = "not_a_regular_file"
    READ_TIMEOUT = "read_timeout"


class FileReadError(ImageError):
    """A file could not be read as a regular file within its limits (``dinoseek.file_read``).
    ``code`` is one of ``ImageErrorCode``'s ``FILE_*``, ``NOT_A_REGULAR_FILE`` or
    ``READ_TIMEOUT``."""

    code = ImageErrorCode.FILE_UNREADABLE


class ModelLoadError(DinoseekError):
    """The model or its image processor could not be loaded."""

    code = "model_load_failed"


class EmbeddingError(DinoseekError):
    """The model produced something that must not be stored (for example NaN)."""

    code = "embedding_failed"


class StoreError(DinoseekError):
    """Base class of the vector store's errors."""

    code = "store_error"


class StoreLockedError(StoreError):
    """The embedded store is held by another process.

    ``holder`` is what that process wrote into the lock file: its ``pid``, and for a running
    server its ``command`` and ``url``, which lets the CLI go through that server instead.
    """

    code = "store_locked"

    def __init__(self, message: str, *, holder: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.holder: dict[str, object] = dict(holder or {})


class StoreUnavailableError(StoreError):
    """The Qdrant server cannot be reached or answered with an error."""

    code = "store_unavailable"


class UploadNotWrittenError(StoreUnavailableError):
    """An added image could not be written to the data directory (a full disk, say)."""

    code = "upload_not_written"


class CollectionNotAcquiredError(StoreError):
    """Points of a collection were read or written before the collection was acquired (a bug
    in the caller: see ``dinoseek.store.protocol``)."""

    code = "collection_not_acquired"


class CollectionNotFoundError(StoreError):
    """The named collection does not exist."""

    code = "collection_not_found"


class CollectionMismatchError(StoreError):
    """The collection was built with another model, dimension or preprocessing."""

    code = "collection_mismatch"


class RegionsNotIndexedError(CollectionMismatchError):
    """A region search or a region write on a collection without region vectors, or with
    region vectors of another layout (``dinoseek.regions.RegionSpec``)."""

    code = "regions_not_indexed"


class InvalidRegionError(DinoseekError):
    """A region box is malformed, outside the image, or too small for the model to see."""

    code = "invalid_region"


class PointRefusedError(StoreError):
    """The store refused the data of a request (a point or payload it cannot hold), as
    opposed to failing itself."""

    code = "point_refused"


class PointNotFoundError(StoreError):
    """No point has the requested id."""

    code = "point_not_found"


class InvalidPointIdError(StoreError):
    """A point id is not a UUID."""

    code = "invalid_point_id"


class ProbeNotFoundError(StoreError):
    """No probe of that name is stored for the collection."""

    code = "probe_not_found"


class PointInFolderError(StoreError):
    """A point is the image of a file in an indexed folder: only ``dinoseek index`` (the
    file's own removal) takes it out; the API deletes only the images added over HTTP."""

    code = "point_in_folder"


class CollectionExistsError(StoreError):
    """A collection of that name exists already (a restore refuses to overwrite it)."""

    code = "collection_exists"


class SnapshotError(StoreError):
    """A snapshot archive is unreadable, damaged, unsafe or of an unknown format."""

    code = "invalid_snapshot"


class ProbeTrainingError(DinoseekError):
    """A probe cannot be trained on the given vectors and labels."""

    code = "probe_training_failed"


class ProbeMismatchError(DinoseekError):
    """A probe was trained on vectors of another model or dimension than it is applied to."""

    code = "probe_mismatch"


class InvalidProbeError(DinoseekError):
    """Serialised probe data is malformed, or a probe's arrays do not fit together."""

    code = "invalid_probe"


class ClusterNotFoundError(DinoseekError):
    """No cluster of that id in the collection's clusters."""

    code = "cluster_not_found"


class ClustersChangedError(DinoseekError):
    """A request names a version of the clusters that is no longer the current one."""

    code = "clusters_changed"
