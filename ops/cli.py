"""The --help layout of every entry point: each option shows its default."""
import argparse
import copy


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
