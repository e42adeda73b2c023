"""Inner solvers: one task-batched policy update per call (registry ``inner``)."""
