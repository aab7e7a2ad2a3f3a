"""Evaluation: metrics on held-out cells, baselines, paired statistics, the summary tables and
their text, the figures, and the findings page.

Nothing is imported here, so that a rule needing one module (say :mod:`.summary`, without
torch) does not load the others (:mod:`.plots` loads matplotlib).
"""
