"""The indexer: scan folders, embed what changed, keep a collection in sync (``index``)."""
