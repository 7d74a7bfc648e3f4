"""Shared plumbing for every Longshore service.

Settings, logging, tracing, server bootstrap, client channels, error mapping,
the health probe and the in-process test server. Nothing domain-specific lives
here; a service never imports another service's modules.
"""

from services.runtime.version import __version__

__all__ = ["__version__"]
