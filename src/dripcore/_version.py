"""The version of dripcore, the single source that packaging reads."""

__version__ = "0.1.0.dev0"
