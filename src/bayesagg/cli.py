"""The ``bayesagg`` command's former module path, kept for installed console scripts.

The command lives in :mod:`bayesagg.app.cli`.
"""

from __future__ import annotations

from bayesagg.app.cli import main

__all__ = ["main"]
