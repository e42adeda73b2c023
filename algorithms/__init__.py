"""Inner solvers (`safemeta.algorithms.inner`) and outer updaters (`safemeta.algorithms.outer`)."""
