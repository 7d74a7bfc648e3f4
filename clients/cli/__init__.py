"""The ``longshore`` command line: talks to the gateway, and runs the system (`up`)."""
