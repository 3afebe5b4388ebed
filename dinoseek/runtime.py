"""One startup for every command, the app factory and the benchmarks.

``Runtime.open(settings, ...)`` does, in this order:

1. open the store: the Qdrant server at ``settings.qdrant_url``, else the embedded store;
2. acquire the collection, explicitly (``collection="existing"``: it must exist;
   ``"optional"``: acquired when it exists, as for ``index`` and ``serve``; ``"none"``);
3. resolve the model: the one given (``--model``, ``DINOSEEK_MODEL``), else the one the
   collection was built with, else the default;
4. load the embedder and check that its embedding space fits the collection;
5. apply the model policy: CPU threads left to decode workers, the batch size, compilation
   and warm-up.

Nothing else in dinoseek opens a store or loads an embedder. How the embedder is made is a
``ModelLoader``, so that tests can hand in a stand-in (``dinoseek.fake_embedder``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from dinoseek.embedder_protocol import ImageEmbedder, available_cores, recorded_model_id
from dinoseek.errors import CollectionNotFoundError, ConfigError, StoreUnavailableError
from dinoseek.search import Searcher
from dinoseek.settings import Settings
from dinoseek.store import VectorStore, open_store

log = logging.getLogger(__name__)

CollectionNeed = Literal["existing", "optional", "none"]
# The service's micro-batcher never sends more than this many images in one forward pass.
SERVE_MAX_BATCH = 64


def load_embedder(model_id: str, settings: Settings) -> ImageEmbedder:
    """DINOv2 through transformers (torch is imported here, on first use, once it is known
    where the model's files come from: a model that cannot load fails before)."""
    from dinoseek.hub import model_source

    source = model_source(model_id)
    from dinoseek.torch_embedder import Embedder

    return Embedder.from_pretrained(
        model_id, device=settings.device, dtype=settings.dtype, source=source
    )


@dataclass(frozen=True)
class ModelLoader:
    """How a runtime makes its embedder from a model id (tests give a stand-in)."""

    load: Callable[[str, Settings], ImageEmbedder] = load_embedder


Purpose = Literal["query", "index", "serve"]


@dataclass(frozen=True)
class ModelPolicy:
    """How the model runs once loaded, for what it is loaded.

    ``index``: decode processes run beside the model (``decode_workers``, None for the
    default of the device), and on a CPU each is left a core. ``serve``: batches come from the
    service's micro-batcher (at most ``SERVE_MAX_BATCH`` images), and every batch size it can
    send is warmed up before the first request. ``query``: neither.
    """

    purpose: Purpose = "query"
    decode_workers: int | None = None


def default_decode_workers(device_type: str, cores: int) -> int:
    """Decode processes: every core (at most 16) feeding a GPU. On a CPU the model needs the
    cores and decoding is a small part of the work: up to 4 cores it runs on a thread of the
    indexer itself; larger machines give it a quarter of them."""
    if device_type == "cuda":
        return min(16, cores)
    return 0 if cores <= 4 else cores // 4


def batch_size_for(asked: int | None, embedder: ImageEmbedder) -> int:
    """Images per forward pass: the one asked for (``--batch-size``, ``DINOSEEK_BATCH_SIZE``),
    else the embedder's default for its device."""
    return asked or embedder.default_batch_size()


def decode_workers_for(asked: int | None, embedder: ImageEmbedder) -> int:
    """Decode processes beside the model: the number asked for (``--workers``), else the
    default for the embedder's device (``default_decode_workers``)."""
    if asked is not None:
        return asked
    return default_decode_workers(embedder.device_type, available_cores())


@dataclass
class Runtime:
    """An open store, the acquired collection, and (when asked for) the loaded embedder."""

    settings: Settings
    store: VectorStore
    embedder: ImageEmbedder | None = None
    policy: ModelPolicy = field(default_factory=ModelPolicy)
    owns_embedder: bool = True
    collection_exists: bool = False

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        owner: Mapping[str, Any] | None = None,
        collection: CollectionNeed = "existing",
        model: bool = True,
        policy: ModelPolicy | None = None,
        loader: ModelLoader | None = None,
        store: VectorStore | None = None,
        embedder: ImageEmbedder | None = None,
    ) -> Runtime:
        """Open the store, acquire the collection, load and prepare the model (module doc).

        ``owner`` describes this process in the embedded store's lock files. A ``store`` or
        an ``embedder`` given by the caller is used instead of opening or loading one; the
        rest of the startup is the same. The store is closed with the runtime (or if the
        startup fails); an embedder given by the caller stays the caller's to close.
        """
        policy = policy or ModelPolicy()
        store = store if store is not None else open_store(settings, owner=owner)
        try:
            serving = policy.purpose == "serve"
            exists = _acquire(settings, store, collection, serving=serving)
            runtime = cls(settings, store, policy=policy, collection_exists=exists)
            runtime.owns_embedder = embedder is None
            if model:
                runtime._prepare(embedder or runtime._load(loader or ModelLoader(), exists), exists)
        except BaseException:
            store.close()
            raise
        return runtime

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def collection(self) -> str:
        """The collection the settings name."""
        return self.settings.collection

    @property
    def model_id(self) -> str:
        """The model this runtime has loaded, or would load (see ``load_model``)."""
        if self.embedder is not None:
            return self.embedder.model_id
        return recorded_model_id(self._model_id(self.collection_exists))

    def load_model(self, loader: ModelLoader | None = None) -> ImageEmbedder:
        """Load and prepare the model of a runtime opened with ``model=False`` (steps 3-5 of
        ``open``), once: a command that may not need the model loads it when it does."""
        if self.embedder is None:
            loaded = self._load(loader or ModelLoader(), self.collection_exists)
            try:
                self._prepare(loaded, self.collection_exists)
            except BaseException:
                self.embedder = None
                loaded.close()
                raise
        return self.require_embedder()

    def require_embedder(self) -> ImageEmbedder:
        """The embedder (``ConfigError`` when this runtime was opened without one)."""
        if self.embedder is None:
            raise ConfigError("this command was started without a model")
        return self.embedder

    @property
    def batch_size(self) -> int:
        """Images per forward pass: the setting, else the embedder's default for its device."""
        return batch_size_for(self.settings.batch_size, self.require_embedder())

    @property
    def decode_workers(self) -> int:
        """Decode processes beside the model (indexing)."""
        return decode_workers_for(self.policy.decode_workers, self.require_embedder())

    @property
    def max_batch(self) -> int:
        """The largest batch the model will see (the micro-batcher's limit when serving)."""
        if self.policy.purpose == "serve":
            return min(SERVE_MAX_BATCH, self.batch_size)
        return self.batch_size

    @cached_property
    def searcher(self) -> Searcher:
        """The search path over this store with this embedder."""
        return Searcher(
            self.store,
            self.require_embedder(),
            max_image_pixels=self.settings.max_image_pixels,
            keep=[self.collection],
            duplicate_threshold=self.settings.duplicate_threshold,
        )

    def close(self) -> None:
        """Flush and release the store (its locks included), and stop the model's thread."""
        try:
            self.store.close()
        finally:
            if self.embedder is not None and self.owns_embedder:
                self.embedder.close()

    # -- internals --------------------------------------------------------------------------

    def _load(self, loader: ModelLoader, collection_exists: bool) -> ImageEmbedder:
        return loader.load(self._model_id(collection_exists), self.settings)

    def _prepare(self, embedder: ImageEmbedder, collection_exists: bool) -> None:
        described = embedder.describe()
        log.info("loaded %s on %s (%s)", embedder.model_id, embedder.device, described["dtype"])
        if collection_exists:
            stored = self.store.collection_space(self.collection)
            embedder.space.check_compatible(stored, self.collection)
        self._apply_policy(embedder)

    def _model_id(self, collection_exists: bool) -> str:
        """An explicit --model/DINOSEEK_MODEL wins; else the collection's; else the default."""
        if "model" in self.settings.model_fields_set or not collection_exists:
            return self.settings.model
        return self.store.collection_space(self.collection).model_id

    def _apply_policy(self, embedder: ImageEmbedder) -> None:
        self.embedder = embedder
        workers = self.decode_workers if self.policy.purpose == "index" else 0
        if workers and embedder.device_type == "cpu":
            from dinoseek.torch_embedder import share_cpu_with_workers

            share_cpu_with_workers(workers)
        _ = embedder.space  # the fingerprint's batch of 1 runs before any compilation
        # A one-off query would spend longer compiling than it could ever save.
        mode = self.settings.compile if self.policy.purpose != "query" else "off"
        if mode != "off":
            embedder.compile(mode, max_batch=self.max_batch)
        if self.policy.purpose == "serve":
            every_size = mode == "reduce-overhead"  # each bucket's CUDA graph, captured now
            embedder.warm_up(range(1, self.max_batch + 1) if every_size else [1, self.max_batch])
        elif mode != "off":
            embedder.warm_up([self.batch_size])


def _acquire(
    settings: Settings, store: VectorStore, need: CollectionNeed, *, serving: bool
) -> bool:
    """Acquire the collection as ``need`` says; whether it exists. A server starts while its
    Qdrant is unreachable (``/ready`` says so until it is back), provided it need not read
    from the collection which model to load."""
    name = settings.collection
    try:
        if need == "none":
            return name in store.list_collections()
        store.acquire(name)
    except CollectionNotFoundError:
        if need == "existing":
            raise
        return False
    except StoreUnavailableError as error:
        if not serving:
            raise
        if "model" not in settings.model_fields_set:
            raise StoreUnavailableError(
                f"{error.message}. Which model collection {name!r} was built with cannot be "
                "read until it is back; start the server then, or give the model "
                "(--model or DINOSEEK_MODEL) to start now"
            ) from None
        log.warning("%s; /ready answers 503 until it is back", error.message)
        return False
    return True
