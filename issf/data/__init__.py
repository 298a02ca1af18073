"""Data: annotations, the HDF5 feature file, the LightningDataModule that streams it, the built-in
dataset generators, and ``prepare`` (public feature formats -> one validated HDF5 file).

May import: ``issf.utils``.
"""
