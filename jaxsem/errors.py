"""Errors a user can cause, reported as one clear line by the launchers."""


class InputError(Exception):
  """A problem with the user's input (a file, a flag, a word) and how to fix it.

  The message is a single sentence that names the file, flag or word. Launchers print
  it without a traceback and exit non-zero.
  """
