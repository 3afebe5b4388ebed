"""``python -m tests.fake_cli ARGS``: the real ``dinoseek`` command with the stand-in model.

For process tests that are not about the model (signals, kills, locks): the process starts
without torch, and ``--model`` takes any id (``fake/dinov2``). With
``DINOSEEK_TEST_EMBED_DELAY_S`` set, each batch takes that much longer and every process that
loads the model leaves its pid in ``DINOSEEK_TEST_PIDS`` (``tests.ray_support``).
"""

import os
from pathlib import Path

from dinoseek_cli.main import main
from tests.fakes import FAKE_LOADER
from tests.ray_support import slow_loader

if __name__ == "__main__":  # decode workers are spawned processes: they import this module
    delay = os.environ.get("DINOSEEK_TEST_EMBED_DELAY_S")
    pids = Path(os.environ.get("DINOSEEK_TEST_PIDS", "pids"))
    loader = slow_loader(pids, float(delay)) if delay else FAKE_LOADER
    main(prog_name="dinoseek", obj=loader)
