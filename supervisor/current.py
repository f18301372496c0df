"""The process-wide current Supervisor (cyme's ``get_current`` / ``set_current``)."""

_current = None


def get_current():
    """The Supervisor set as current (the last one created with set_as_current=True), or
    None."""
    return _current


def set_current(supervisor):
    """Make ``supervisor`` the current one; returns it."""
    global _current
    _current = supervisor
    return supervisor
