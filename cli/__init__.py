"""The ``debias`` command line."""
