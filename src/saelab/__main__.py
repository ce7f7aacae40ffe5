"""`python -m saelab`: the same as the `saelab` script (and what torchrun starts on every rank)."""

import logging
import os
import sys

from saelab.cli import main
from saelab.util import distributed

code = main()
if distributed.in_group():
    # A torchrun rank whose run is complete (every file written and renamed into place): leave the
    # group, flush, and exit without the interpreter's teardown, where gloo's threads can still abort
    # a finished process (SIGABRT, "terminate called without an active exception": 3 of about 20
    # two-rank test runs on 2026-12-07, after the group was already destroyed at exit).
    distributed.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
