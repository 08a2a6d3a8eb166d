"""The one error type the command line turns into a one-line message and exit code 2."""


class UserInputError(ValueError):
    """Bad input from the user: the message names the input and the fix.

    The CLI prints ``error: <message>`` and exits with status 2, without a traceback.
    Library code raises it only for problems the user can correct (paths, names, values),
    never for internal bugs.
    """
