"""The dinoseek CLI and indexer: scan folders, embed what changed, keep a collection in sync."""
