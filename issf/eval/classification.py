"""Video-level classification mAP: the functional :func:`classification_map` and the thin
torchmetrics :class:`ClassificationMAP` over it (what runs log as ``cls_mAP``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import multilabel_average_precision
from torchmetrics.utilities import dim_zero_cat

from issf.eval.functional import ArrayLike


def classification_map(video_scores: ArrayLike, labels: ArrayLike) -> float:
    """Video-level classification mAP in percent: macro average of torchmetrics' multilabel AP over
    the classes that have a positive video.

    Differences from W-TALC's ``getClassificationMAP``/``getAP`` (precision averaged at each positive
    after sorting by score): exact score ties are scored as one group here, whereas ``getAP`` depends
    on the unstable sort order; and classes without any positive video are left out of the mean
    here, whereas ``getAP`` divides by zero (NaN) and torchmetrics' own macro average would count
    them as 0. Scores are taken in float64.
    """
    preds = torch.as_tensor(
        np.asarray(video_scores.detach().cpu() if isinstance(video_scores, Tensor) else video_scores)
    )
    target = torch.as_tensor(np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels))
    if preds.ndim != 2 or preds.shape != target.shape:
        raise ValueError(
            f"video_scores and labels must both be [V, C], got {tuple(preds.shape)} and {tuple(target.shape)}"
        )
    if not torch.isfinite(preds.double()).all():
        raise ValueError("classification_map: video_scores contain NaN or inf")
    if not ((target == 0) | (target == 1)).all():
        raise ValueError("classification_map: labels must be 0/1")
    positive = (target == 1).any(dim=0)
    if not positive.any():
        raise ValueError("classification_map: no class has a positive video")
    value = multilabel_average_precision(
        preds[:, positive].double(),
        target[:, positive].long(),
        num_labels=int(positive.sum()),
        average="macro",
    )
    return float(value) * 100.0


class ClassificationMAP(Metric):
    """:func:`classification_map` accumulated over batches (and DDP ranks); ``compute`` returns a
    fraction.

    >>> metric = ClassificationMAP()
    >>> metric.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([[1, 0], [0, 1]]))
    >>> round(float(metric.compute()), 4)
    1.0
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, video_scores: Tensor, labels: Tensor) -> None:
        self.scores.append(video_scores.detach().double())
        self.labels.append(labels.detach().long())

    def compute(self) -> Tensor:
        return torch.tensor(classification_map(dim_zero_cat(self.scores), dim_zero_cat(self.labels)) / 100.0)
