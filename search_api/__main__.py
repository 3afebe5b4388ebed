"""``python -m search_api [OPTIONS]``: the same as ``dinoseek serve [OPTIONS]``."""

from search_api.commands import serve

serve(prog_name="python -m search_api")
