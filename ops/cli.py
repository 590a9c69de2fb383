"""Command-line plumbing of every entry point: the --help layout (each option shows its
default) and input errors / Ctrl-C as one line instead of a traceback."""
import argparse
import copy
import functools
import os
import sys

from ops.errors import UserError
from ops.files import STORAGE_ERRNOS
from ops.logs import close_progress_bars


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's ArgumentDefaultsHelpFormatter, also for options without a help text, and
    silent where there is nothing to show (a default of None or '': an unset value; a
    store_true / store_false switch, whose help says what it turns on or off) or where the help
    already places ``%(default)s`` itself."""

    @staticmethod
    def shows_default(action):
        return (bool(action.option_strings) and action.nargs != 0
                and action.default not in (None, '', argparse.SUPPRESS))

    def _format_action(self, action):
        if not action.help and self.shows_default(action):
            action = copy.copy(action)
            action.help = '(default: %(default)s)'
        return super()._format_action(action)

    def _get_help_string(self, action):
        help_text = action.help or ''
        if '%(default)' in help_text or not self.shows_default(action):
            return help_text
        return help_text + ' (default: %(default)s)'


def _prog():
    return os.path.basename(sys.argv[0]) or 'masnet'


def exit_on_user_error(main):
    """Run `main`, turning input errors (bad checkpoint, dataset, list file, flag) and Ctrl-C
    into one line instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (UserError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in STORAGE_ERRNOS:
                raise
            message = str(exc).strip()
            if 'Original Traceback' in message:  # re-raised from a DataLoader worker
                message = message.splitlines()[-1].split(': ', 1)[-1]
            close_progress_bars()
            print(f'{_prog()}: error: {message}', file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            close_progress_bars()
            print(f'{_prog()}: interrupted', file=sys.stderr)
            sys.exit(130)

    return wrapper
