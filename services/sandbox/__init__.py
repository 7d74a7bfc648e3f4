"""The sandbox manager: the only part of Longshore that talks to Docker."""
