"""``python -m loadtest``: the load-test CLI (:mod:`loadtest.cli`)."""

import sys

from loadtest.cli import main

sys.exit(main())
