"""The one exception type for bad user input.

`MintError` subclasses `ValueError`, so callers may catch either. The CLI prints its
message (which names the file, record or key, and the fix) without a traceback.
"""


class MintError(ValueError):
    """Bad input or settings: the message says what was wrong and how to fix it."""
