"""The ``dinoseek`` command group: the apps' commands (``index``, ``serve``) and those that
belong to neither (``search``, ``info``, ``probe``, ``snapshot``), in one command."""
