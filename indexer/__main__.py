"""``python -m indexer FOLDER...``: the same as ``dinoseek index FOLDER...``."""

from indexer.index_command import index

index(prog_name="python -m indexer")
