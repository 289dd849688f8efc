"""Built-in stages, registered under the `vistream.stages` entry-point group like any plugin."""
