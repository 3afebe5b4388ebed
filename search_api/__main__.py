"""``python -m search_api [OPTIONS]``: the same as ``dinoseek serve [OPTIONS]``."""

from search_api.serve_command import serve

serve(prog_name="python -m search_api")
