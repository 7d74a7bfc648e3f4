"""Longshore clients: the `longshore` command line (``clients.cli``) and a Node example."""
