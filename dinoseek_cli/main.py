"""``dinoseek``: the command group above both apps.

The indexer contributes ``index``, the service ``serve`` (composed here with the indexer's
folder watcher for ``serve --watch``); ``search``, ``info``, ``probe``,
``snapshot``, ``collection``, ``dedup``, ``curate``, ``eval`` and ``adapt`` live here. Every
command opens what it needs through ``dinoseek.runtime``.
"""

from __future__ import annotations

import click

from dinoseek import __version__
from dinoseek.commandline import EPILOG
from dinoseek_cli.adapt import adapt
from dinoseek_cli.collection import collection
from dinoseek_cli.curate import curate
from dinoseek_cli.dedup import dedup
from dinoseek_cli.eval import evaluate
from dinoseek_cli.info import info
from dinoseek_cli.probe import probe
from dinoseek_cli.search import search
from dinoseek_cli.serve import serve
from dinoseek_cli.snapshot import snapshot
from indexer.index_command import index


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EPILOG,
)
@click.version_option(__version__, prog_name="dinoseek")
def main() -> None:
    """dinoseek: self-hosted image similarity search on DINOv2 features and Qdrant.

    \b
    Quick start:
      dinoseek index ~/Pictures --labels-from-folders   # embed every image once
      dinoseek search query.jpg                         # nearest neighbours
      dinoseek serve                                    # the search page and the API
      dinoseek serve --watch ~/Pictures                 # and keep up with the folder
      dinoseek dedup                                    # mark near-duplicates
      dinoseek curate --reference good/ --into kept     # keep what is like good/
      dinoseek eval                                     # how well labels separate
      dinoseek adapt ~/Pictures --out adapted           # self-distil DINOv2 on them
      dinoseek info                                     # what is stored where
      dinoseek collection rename images photos          # or delete NAME

    Everything lands in ./dinoseek-data (the embedded store) unless DINOSEEK_QDRANT_URL points
    to a Qdrant server.
    """


for command in (
    index,
    search,
    info,
    serve,
    probe,
    snapshot,
    collection,
    dedup,
    curate,
    evaluate,
    adapt,
):
    main.add_command(command)
