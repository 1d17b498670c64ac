"""Errors the CLI turns into a clear message and exit status 2 (no traceback)."""


class UserError(Exception):
    """Bad input from the user: a plan, a path, a flag. The message says what and where."""


class CellSkipped(Exception):
    """A cell that cannot run here (missing package, no GPU, provider absent).

    Raised by a runtime or model before anything is measured; the cell is recorded as
    `skipped` with this message as its reason.
    """


class WeightsUnavailable(Exception):
    """The plan asked for weights that are not on this machine or cannot be loaded; the cell
    fails with this reason (never a fallback to other weights)."""
