"""Every `vistream` command. The only package that may import ``plugins``."""
