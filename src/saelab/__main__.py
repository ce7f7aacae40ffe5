"""`python -m saelab`: the same as the `saelab` script."""

import sys

from saelab.cli import main

sys.exit(main())
