"""Every `vistream` command. The only package that may import ``plugins``."""

from engine.cli.std_streams import reopen_closed_std_streams

# Before any subcommand module (and the libraries they import) reads sys.stdout/sys.stderr.
reopen_closed_std_streams()
