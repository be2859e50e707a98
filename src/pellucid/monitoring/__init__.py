"""Gradient monitoring: per-layer statistics during training, and what they mean.

* :mod:`pellucid.monitoring.monitor`: :class:`GradientMonitor`, a training callback that
  records per-layer gradient norms (sharing the clipper's norms), weight norms, update
  ratios and dead units, and writes them as CSV/JSON.
* :mod:`pellucid.monitoring.diagnosis`: :func:`diagnose_history`, pure functions of that
  history that return :class:`Finding` objects (exploding, vanishing, non-finite, dead).

Plotting stays in :mod:`pellucid.plot`, imported only when :meth:`GradientMonitor.plot` is
called, so importing this package does not import matplotlib.

Example:
    >>> monitor = GradientMonitor(log_every=5)
    >>> monitor.diagnose()
    []
"""

from __future__ import annotations

from pellucid.monitoring.diagnosis import Finding, diagnose_history
from pellucid.monitoring.monitor import GradientMonitor

__all__ = ["Finding", "GradientMonitor", "diagnose_history"]
