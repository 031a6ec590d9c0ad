"""Objective evaluation of a voice: intelligibility, speaker similarity and quality per candidate.

``sets`` fixes the lines every candidate speaks, ``metrics`` scores one utterance, ``run`` drives
synthesis and scoring over candidates, ``choose`` turns the table into a choice (the
``best-eval`` rule, early stopping), ``results`` reads what runs wrote, ``report`` draws it.
"""
