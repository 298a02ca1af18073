"""The Hydra application behind ``run.py``: the entry point (``main``), one function per task
(``tasks``), building objects from the config (``build``), reading command-line overrides
(``overrides``), DDP under Hydra (``ddp``), run directories and their lock (``run_dir``,
``run_lock``), and the console (``console``). The only package that imports Hydra.

May import: every other ``issf`` package.
"""
