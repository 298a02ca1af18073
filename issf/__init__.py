"""issf: weakly-supervised temporal action localization with ISSF.

Packages by layer; each imports only the layers listed before it (``tests/test_layout.py``):

``utils``     atomic file writes, typed-config checks
``data``      annotations, the HDF5 feature file, the LightningDataModule, the synthetic and
              real-recording generators, ``prepare`` (public formats -> HDF5)
``eval``      detections, localization, mAP@tIoU, the evaluator, stored predictions
``model``     the ISSF network and its losses (plain PyTorch)
``analysis``  figures and sweep reports
``train``     the LightningModule, fit/test/eval pipelines, callbacks, loggers, checkpoints
``app``       the Hydra application behind ``run.py``: tasks, overrides, DDP, run directories

Only ``app`` imports Hydra.
"""

__version__ = "0.1.0"
