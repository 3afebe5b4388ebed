"""``python -m dinoseek_cli``: the ``dinoseek`` command."""

from dinoseek_cli.main import main

main(prog_name="dinoseek")
