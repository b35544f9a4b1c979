"""The one exception type the CLI turns into a one-line message instead of a traceback."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user (file, field, option), phrased as one line naming it."""
