"""The jobs behind the ``debias`` commands: paths in, output folders written.

``audit`` (``write_audit``), ``outliers`` (``write_outliers``), ``report`` (``write_report``) and
``demo`` (``write_demo``); ``debias train`` is :func:`debias.training.train`, which writes a run
folder. Each job reads its inputs, calls the library and writes its output set.
"""
