"""dinoseek core: images -> embedder -> store, with settings and domain errors.

The core imports neither app (``indexer``, ``search_api``); the apps reach Qdrant and torch
only through it.
"""

__version__ = "0.1.0"
