"""Pause, resume, snapshots and leases of sandboxes (issue 13 §5).

Three nouns, each held by the manager like :mod:`..files`:

* :class:`.pauses.Pauses` freezes and thaws sandboxes (the engine's cgroup
  freezer) and keeps the manager's belief of which are paused, so the one
  place every use passes (:meth:`SandboxManager.resolve_id`, the file RPCs'
  target) resumes a paused sandbox with no extra engine call for a running
  one;
* :class:`.snapshots.Snapshots` commits a sandbox to an image of this
  deployment's snapshot repository, lists, bounds and deletes them, and
  admits a snapshot image in a spec only for its own deployment;
* :class:`.leases.Leases` keeps each sandbox's lease in memory and pauses or
  removes it at expiry on a timer thread.

docs/sandbox-lifecycle.md describes the semantics callers rely on.
"""
