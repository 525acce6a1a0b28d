"""Reporting: the figures and reports of each command, made from the data the library returns.

The library (physics … imaging, design) computes and saves data (JSON, CSV, NIfTI) and never
draws; the command line calls one module here per command to write the figures and reports
beside that data, through :mod:`crbnet.plots`. One module per report: ``evaluation``,
``comparison``, ``points``, ``training``, ``design``, ``phantom``, ``demo`` (the ``crbnet
demo`` pipeline and its report) and ``invivo`` (the demo's in-vivo slice); ``result_files``
writes a result's JSON, text reports and figure together.
"""
