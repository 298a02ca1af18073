"""Training with Lightning: the LightningModule, fit/test/eval pipelines, callbacks, diagnostics,
loggers, checkpoint reading, and process-wide CPU settings.

May import: ``issf.utils``, ``issf.data``, ``issf.eval``, ``issf.model``, ``issf.analysis``.
"""
