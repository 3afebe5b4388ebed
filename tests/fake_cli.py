"""``python -m tests.fake_cli ARGS``: the real ``dinoseek`` command with the stand-in model.

For process tests that are not about the model (signals, kills, locks): the process starts
without torch, and ``--model`` takes any id (``fake/dinov2``).
"""

from dinoseek_cli.main import main
from tests.fakes import FAKE_LOADER

if __name__ == "__main__":  # decode workers are spawned processes: they import this module
    main(prog_name="dinoseek", obj=FAKE_LOADER)
