"""Analysis outside training: diagnostic figures (``viz``) and the mean +- std report of a
multirun (``report``).

May import: ``issf.utils``, ``issf.data``, ``issf.eval``.
"""
