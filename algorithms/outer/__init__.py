"""Outer updaters: the meta update from per-task adaptation results (registry ``outer``)."""
