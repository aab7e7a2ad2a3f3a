"""Evaluation: metrics, baselines, statistics, summaries, figures and findings.

The metrics on held-out cells, the baselines, the paired statistics, the summary tables and
their text, the figures, and the findings page.

Nothing is imported here, so that a rule needing one module (say :mod:`.summary`, without
torch) does not load the others (:mod:`.plots` loads matplotlib).
"""
