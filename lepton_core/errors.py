"""Errors that mean "the user's input is wrong": shown as one line, never a traceback."""


class LeptonError(Exception):
    """A problem with the user's input or configuration (bad path, bad param, bad data)."""


class DataError(LeptonError):
    """The dataset cannot be used (unknown format, unreadable, one class, ...)."""


class ParamsError(LeptonError):
    """A parameter is missing, unknown or of the wrong type."""


class InputError(LeptonError):
    """Samples given to a model do not fit it (shape, dtype, range, columns)."""
