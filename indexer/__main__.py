"""``python -m indexer``: the ``dinoseek`` command."""

from indexer.cli import main

main()
