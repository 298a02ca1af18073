"""Evaluation without the network: detections and their JSON I/O, localization, mAP@tIoU (functional
and a torchmetrics ``Metric``), classification mAP, error analysis, the per-split evaluator, and
stored predictions. Nothing here imports the model, the LightningModule or the pipelines.

One job per module: ``detections`` (the ``Detections`` type, ActivityNet-format JSON),
``localize`` (CAS -> detections), ``functional`` (matching and AP), ``metric``
(``TemporalDetectionMAP``), ``classification`` (video classification mAP), ``error_analysis``
(DETAD-style error breakdown), ``evaluator`` (``EvaluationConfig``, ``VideoEvaluator``),
``predictions`` (``predictions.h5``), ``intervals`` (interval overlap and second <-> snippet
conversion).

May import: ``issf.utils``, ``issf.data``.
"""
