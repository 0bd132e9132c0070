"""``python -m bayesagg ...``: the same as the ``bayesagg`` command."""

from __future__ import annotations

import sys

from bayesagg.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
