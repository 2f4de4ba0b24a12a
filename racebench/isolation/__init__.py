"""`racebench isolation`: Hermitage's isolation tests, automated against a live server.

`run_isolation(target)` runs every probe (racebench.isolation.probes) at every isolation level
the server offers and returns the measured matrix; `render` prints it with the differences
from the server's documentation and from Hermitage's published table.
"""

from racebench.isolation.matrix import IsolationMatrix, run_isolation
from racebench.isolation.render import FORMATS, render

__all__ = ["FORMATS", "IsolationMatrix", "render", "run_isolation"]
