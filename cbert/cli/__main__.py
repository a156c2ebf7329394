"""``python -m cbert.cli``: the same as the ``cbert`` command."""

import sys

from . import main

sys.exit(main())
