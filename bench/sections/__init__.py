"""The sections of the scae benchmark (bench/run.py), one module each.

A section is a function ``section_<name>(report, args, workdir) -> None``: it measures, adds
its rows to ``report`` (a :class:`sections.common.Report`) with ``report.add`` and its raw
numbers to ``report.details[<name>]``; ``args`` is run.py's parsed command line and
``workdir`` the folder for data and workflow runs. run.py's ``SECTIONS`` maps each
``--only`` name to its function. Helpers used by several sections are in sections.common.
"""
