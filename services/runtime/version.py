"""The running Longshore release, read once from the installed distribution."""

from importlib import metadata

try:
    __version__ = metadata.version("longshore")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
