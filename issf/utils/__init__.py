"""Utilities with no knowledge of the method: atomic file writes and typed-config checks.

May import: the standard library, numpy.
"""
