"""The one exception type users see.

Both halves raise it for problems the user can fix (bad input, wrong file kind, missing key).
The CLI prints its message as a single line and exits with code 2; anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""
