"""``python -m igris_mw.cli``: the same as the ``igris-mw`` script."""

import sys

from . import main

sys.exit(main())
