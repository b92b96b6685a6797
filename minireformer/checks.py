"""Argument checks every module shares, so that one mistake always gets the same message."""


def check_int(name, value, *, least=1, wanted=None):
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is an integer (not a bool) ``>= least``; the
    message says what was wanted (``wanted``: in other words, when the caller checks more, e.g. evenness)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(
            f"{name} must be {wanted or ('a positive integer' if least == 1 else f'an integer >= {least}')}, "
            f"got {value!r}"
        )
    return value


def check_bool(name, value):
    """Raise a ``TypeError`` naming ``name`` unless ``value`` is True or False (``"no"`` is not False)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value
