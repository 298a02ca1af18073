"""issf command line: ``python run.py [task=train|eval|prepare|synthesize|verify|report] [overrides]``.

A thin shim over :mod:`issf.app.main` (the Hydra application); ``python run.py --help`` lists tasks
and config groups.
"""

from issf.app.main import cli

if __name__ == "__main__":
    cli()
