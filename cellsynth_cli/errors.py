"""The one exception type for bad input: the CLI prints its message on one line, exit 2."""


class InputError(ValueError):
    """Bad input from the user (file, value, shape, model); the message names what is wrong."""
