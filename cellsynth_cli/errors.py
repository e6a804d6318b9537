"""The one exception type for bad input: the CLI prints its message on one line, exit 2."""


class InputError(ValueError):
    """Bad input from the user (file, value, shape, model); the message names what is wrong."""


def check_choice(value: str, choices: tuple[str, ...], option: str) -> None:
    """OPTION must be one of CHOICES (as the CLI spells it in the message)."""
    if value not in choices:
        raise InputError(f"{option} must be {' or '.join(choices)}, got {value!r}")
