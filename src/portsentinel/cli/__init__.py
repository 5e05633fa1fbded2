"""The ``portsentinel`` command line: the parser and one module per verb family."""
