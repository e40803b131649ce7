"""The fairness audit's statistics: metrics, bootstrap intervals and disparities (pure).

- :mod:`debias.fairness.metrics`: every metric from confusion counts, keyed, and fairlearn's
  ``MetricFrame`` for the point estimates;
- :mod:`debias.fairness.bootstrap`: a stratified bootstrap over confusion counts;
- :mod:`debias.fairness.disparities`: each group against a reference group, with flags;
- :mod:`debias.fairness.audit`: ``audit(y_true, y_pred, groups, options)``, which puts them
  together.
"""
