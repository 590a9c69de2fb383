"""The one base of the errors a user can fix: bad input (files, flags, data) or a run that cannot
go on. Entry points print them as one line (ops.cli.exit_on_user_error); any other
exception is a bug and keeps its traceback."""


class UserError(Exception):
    """An error in the user's input or environment, reported as one line."""


class FlagError(UserError):
    """A command-line value that argparse alone cannot check (e.g. one value per checkpoint)."""
