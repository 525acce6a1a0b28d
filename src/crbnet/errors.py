"""Exception types. Every bad-input error derives from :class:`InputError`; the CLI turns it into
one line on stderr and exit code 2."""


class InputError(ValueError):
    """Bad input from a user: unknown name, out-of-bounds value, malformed file, wrong shape."""
