"""tandem's HTTP front door. Imports without torch."""

__version__ = "0.1.0"
