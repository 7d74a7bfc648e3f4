"""Kanban-dispatch service: boards, profiles, tasks, runs and the dispatcher."""
