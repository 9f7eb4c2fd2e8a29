"""Maintainer tools that sit above the pipeline: each is run as ``python -m aero_compile.tools.NAME``.

``fit_bumblebee`` rebuilds the AERO paper's GPT-2 rows with the passes, prices them with the cost
analyzer and fits the bumblebee profile (``aero_compile/cost/data/bumblebee.json``). A tool may import
any layer; nothing in the pipeline imports a tool.
"""
