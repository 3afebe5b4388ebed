"""``python -m search_api [OPTIONS]``: the same as ``dinoseek serve [OPTIONS]``."""

import sys

from indexer.cli import main

main(["serve", *sys.argv[1:]], prog_name="python -m search_api")
