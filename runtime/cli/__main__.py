"""`python -m edgelut.cli` is the `edgelut` command."""

import sys

from edgelut.cli import main

sys.exit(main())
