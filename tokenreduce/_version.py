"""The package version, in a module that imports nothing (the CLI's ``--version`` stays instant)."""

__version__ = "0.1.0"
