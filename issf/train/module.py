"""LightningModule wrapping the ISSF network: training schedule, memory, evaluation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from issf.eval.classification import ClassificationMAP
from issf.eval.detections import Detections
from issf.eval.evaluator import EvaluationConfig, EvaluationResult, VideoEvaluator
from issf.eval.predictions import collect, write_predictions
from issf.model.config import ISSFConfig
from issf.model.network import ISSF
from issf.utils.io import tagged_file

# names of the test of the best checkpoint, by the split it was selected on
SELECTED_ON_VALIDATION = "test_val_selected"
SELECTED_ON_TEST = "test_best_on_test"

# builds the optimizer from the parameters, e.g. ``functools.partial(torch.optim.AdamW, lr=1e-4)``
# (what Hydra makes of a ``_partial_: true`` config such as conf/model/issf.yaml's ``optimizer``)
OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def selected_checkpoint_tag(datamodule: Any) -> str:
    """``test_val_selected`` when the best checkpoint is chosen on validation videos held out from
    the training split, ``test_best_on_test`` when it is chosen on the test split itself (the
    released code's reporting, B16: an optimistic figure, labelled as such everywhere)."""
    return SELECTED_ON_VALIDATION if getattr(datamodule, "val_split", "test") == "val" else SELECTED_ON_TEST


def evaluation_tag(trainer: pl.Trainer, split: str) -> str:
    """Name of an evaluation in logs and files: ``val`` (the selection split during fitting),
    ``test_curve`` (the test split during fitting, when selection is on held-out validation videos),
    ``test`` (the weights in memory) or the best checkpoint's test (a checkpoint given to
    ``trainer.test``: :func:`selected_checkpoint_tag`)."""
    if split != "test":
        return split
    return "test" if trainer.ckpt_path is None else selected_checkpoint_tag(trainer.datamodule)


class ISSFModule(pl.LightningModule):
    """ISSF training and evaluation.

    The batch loss is the SUM of per-video losses, so one Adam step on B videos equals the official
    accumulation of B single-video steps (coupled L2 weight decay; B14 in docs/released_code.md).
    ``optimizer`` is either a factory (parameters -> optimizer) or the settings of that Adam
    (``lr``, ``betas``, ``eps``, ``weight_decay``, ``fused``; defaults: the paper's).
    """

    def __init__(
        self,
        num_classes: int,
        input_dim: int,
        network: dict[str, Any] | None = None,
        optimizer: OptimizerFactory | dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        snippet_seconds: float = 16 / 25,
        run_config: dict[str, Any] | None = None,
        feature_checksum: str | None = None,
    ):
        super().__init__()
        # a factory is no hyper-parameter a checkpoint can hold (it is code; its settings are in
        # run_config); plain settings are kept
        self.save_hyperparameters(ignore=["optimizer"] if callable(optimizer) else None)
        self.net_cfg = ISSFConfig(num_classes=num_classes, input_dim=input_dim, **(network or {}))
        self.net = ISSF(self.net_cfg)
        self.optimizer_factory = optimizer if callable(optimizer) else None
        self.optim_cfg = {"lr": 5e-5, "betas": (0.9, 0.99), "weight_decay": 5e-4,
                          **({} if callable(optimizer) else optimizer or {})}
        self.eval_cfg = EvaluationConfig(**(evaluation or {}))
        self.class_names = class_names or [f"class_{i}" for i in range(num_classes)]
        self.snippet_seconds = snippet_seconds
        self.evaluators = torch.nn.ModuleDict()
        self.cls_map = torch.nn.ModuleDict(
            {s: ClassificationMAP() for s in ("val", "test_curve", "test")}
        )
        # the last evaluation of each split (detections of all ranks), read by the diagnostic plots
        self.evaluation_results: dict[str, EvaluationResult] = {}
        self._predictions: list = []  # per-video test outputs of this process (issf.eval.predictions.collect)
        self.checkpoint_epoch: int | None = None  # epoch of the checkpoint the weights came from, if any

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.checkpoint_epoch = int(checkpoint["epoch"]) if "epoch" in checkpoint else None

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1 and self.device.type == "cpu":
            # CPU ranks share the cores; and in forked ranks OpenMP's thread pool does not survive
            # the fork (a parallel region run by the parent leaves the children at its barrier)
            torch.set_num_threads(1)
        dm = self.trainer.datamodule
        if dm is None:
            return
        if stage == "fit":
            self._check_saliency_ratio(dm)
        during_fit = {"val": dm.val_split, **({"test_curve": "test"} if dm.val_split == "val" else {})}
        splits = {"fit": during_fit, "validate": during_fit, "test": {"test": "test"}}
        for split, data_split in splits.get(stage, {}).items():
            self.evaluators[split] = VideoEvaluator(dm.ground_truth(data_split), self.eval_cfg, dm.snippet_seconds)

    def _tested_checksum(self) -> str | None:
        """Checksum of the feature file being tested (the trained-on one when unknown)."""
        file = getattr(self.trainer.datamodule, "file", None)
        return getattr(file, "checksum", None) or self.hparams.get("feature_checksum")

    def _check_saliency_ratio(self, dm: Any) -> None:
        """``saliency_ratio`` p selects K = floor(p T) - 1 snippets of a T-snippet video: a p that
        selects none in most training videos (``saliency_ratio=0.0001``) is an error at fit start."""
        if not self.net_cfg.saliency or not hasattr(dm, "train_indices"):
            return
        lengths = np.asarray(dm.file.lengths[dm.train_indices])
        if getattr(dm, "train_sample_length", None):
            lengths = np.full(len(lengths), int(dm.train_sample_length))
        if not len(lengths):
            return
        median = float(np.median(lengths))
        if np.floor(self.net_cfg.saliency_ratio * median) - 1 < 1:
            raise ValueError(
                f"model.network.saliency_ratio: {self.net_cfg.saliency_ratio} selects no salient snippet "
                f"(K = floor(p T) - 1 = 0) in most training videos (median length T = {median:g} snippets); "
                f"must be >= {2.0 / median:.3g} for these data, and <= 1")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.net.parameters())
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params)
        cfg = self.optim_cfg
        # one fused kernel per step instead of a dozen passes per parameter (5x faster on CPU)
        fused = bool(cfg.get("fused", True)) and all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(
            params, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg.get("eps", 1e-8),
            weight_decay=cfg["weight_decay"], fused=fused or None,
        )

    def on_train_start(self) -> None:
        """The configured optimizer settings win over the ones a resumed checkpoint restored with the
        optimizer state (a resume with ``model.optimizer.lr=...`` and ``resume_changes=allow`` trains
        with the new lr; without a resume this changes nothing)."""
        configured = self.configure_optimizers()  # a fresh one: the configured settings, no state
        optimizer = self.optimizers(use_pl_optimizer=False)
        for group, fresh in zip(optimizer.param_groups, configured.param_groups, strict=True):
            group.update({key: value for key, value in fresh.items() if key != "params"})

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        epoch = self.current_epoch
        syncing = self.net.memory_active(epoch) and self.trainer.world_size > 1
        snapshot = (self.net.memory.slots.clone(), self.net.memory.scores.clone()) if syncing else None
        terms, out = self.net.losses(batch["features"], batch["mask"], batch["labels"], epoch,
                                     lengths=batch.get("host_lengths"), classes=batch.get("host_classes"))
        if syncing:
            self._replay_memory_updates(snapshot, out.memory_updates, epoch)
        size = len(batch["features"])
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value.mean(), on_step=False, on_epoch=True, batch_size=size)
        return terms["total"].sum()

    def _replay_memory_updates(self, snapshot: tuple, updates: list, epoch: int) -> None:
        """Make the memory identical on every rank: restore the pre-step state and apply the
        updates of all ranks in rank order (rank 0's videos first)."""
        gathered: list = [None] * self.trainer.world_size
        local = [(f.cpu(), s.cpu(), c) for f, s, c in updates]
        torch.distributed.all_gather_object(gathered, local)
        self.net.memory.slots.copy_(snapshot[0])
        self.net.memory.scores.copy_(snapshot[1])
        for rank_updates in gathered:
            for feats, scores, classes in rank_updates:
                self.net.memory.update(feats.to(self.device), scores.to(self.device), classes, epoch)

    def on_train_epoch_end(self) -> None:
        cfg = self.net_cfg
        if cfg.memory and self.current_epoch == cfg.memory_init_epoch:
            self.initialize_memory()

    @torch.no_grad()
    def initialize_memory(self) -> None:
        """Eval-mode pass over all training videos in file order (every rank does the full pass)."""
        was_training = self.net.training
        self.net.eval()
        for batch in self.trainer.datamodule.memory_init_dataloader():
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            self.net.insert_into_memory(batch["features"], batch["mask"], batch["labels"], self.current_epoch)
        self.net.memory.initialized.fill_(True)
        self.net.train(was_training)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, split: str, batch: dict) -> None:
        video_scores, cas, _ = self.net.predict(batch["features"], batch["mask"])
        self.cls_map[split].update(video_scores.float(), batch["labels"].long())
        self.evaluators[split].update(batch["index"], video_scores, cas, batch["lengths"], batch.get("scale"))
        if split == "test":
            self._predictions.extend(
                collect(batch["index"], video_scores, cas, batch["lengths"], batch.get("scale")))

    def _eval_epoch_end(self, split: str) -> None:
        """Log the split's figures and keep its result; a test also writes the raw per-video outputs
        to ``predictions.h5`` (rank 0, all ranks' videos), from which the pipeline computes
        metrics.json and detections.json."""
        evaluator = self.evaluators[split]
        detections = evaluator.detections()
        predictions, self._predictions = self._predictions, []
        if self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, detections)
            detections = Detections.concatenate(gathered, units="seconds")
            if split == "test":
                torch.distributed.all_gather_object(gathered, predictions)
                predictions = [row for rank in gathered for row in rank]
        result = evaluator.result(cls_map=float(self.cls_map[split].compute()), detections=detections)
        tag = evaluation_tag(self.trainer, split)
        self.log_dict({f"{tag}/{k}": v for k, v in result.summary.items()}, sync_dist=False)
        self.evaluation_results[split] = result
        if split == "test" and self.trainer.is_global_zero:
            run_config = self.hparams.get("run_config") or {}
            write_predictions(tagged_file(self.trainer.default_root_dir, "predictions.h5", tag), predictions,
                              evaluator.ground_truth, self.snippet_seconds, dataclasses.asdict(self.eval_cfg),
                              data=run_config.get("data"), feature_checksum=self._tested_checksum())
        evaluator.reset()
        self.cls_map[split].reset()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val" if dataloader_idx == 0 else "test_curve", batch)

    def on_validation_epoch_end(self) -> None:
        for split in ("val", "test_curve"):
            if split not in self.evaluators:
                continue
            if not self.trainer.sanity_checking:
                self._eval_epoch_end(split)
            else:
                self.evaluators[split].reset()
                self.cls_map[split].reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ inspection
    @torch.no_grad()
    def inspect_video(self, features: np.ndarray, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Everything the plots show for one video (eval mode): video scores [C], CAS [T, C],
        class-agnostic attention [T], temporal differences [T], salient mask [T]; with the
        pseudo-label loss on, its target as logits [T, C+1] (``pseudo_labels``: the teacher / tau,
        whose softmax is what the base branch is distilled towards); with an
        initialised memory, the memory branch's own snippet logits [T, C+1] (``memory_logits``).
        The memory is read with the video's ``labels`` (multi-hot; default: the top predicted class)."""
        x = torch.as_tensor(np.asarray(features), dtype=torch.float32, device=self.device)[None]
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=self.device)
        was = self.net.training
        self.net.eval()
        scores, cas, out = self.net.predict(x, mask)
        result = {"video_scores": scores[0].cpu().numpy(), "cas": cas[0].cpu().numpy(),
                  "attention": out.base.attention[0].cpu().numpy()}
        if out.salient is not None:  # in eval mode the differences are those of the pre-dropout features
            result["saliency"] = out.differences[0].cpu().numpy()
            result["salient"] = out.salient[0].cpu().numpy()
        mem = None
        if self.net_cfg.memory and bool(self.net.memory.initialized):
            if labels is None:
                labels = np.eye(self.net_cfg.num_classes)[int(scores[0].argmax())]
            y = torch.as_tensor(np.asarray(labels), dtype=torch.float32, device=self.device)[None]
            mem = self.net.memory_branch(out, y, self.current_epoch, update=False)
            result["memory_logits"] = mem.logits[0].cpu().numpy()
        if self.net_cfg.pseudo_labels and out.saliency is not None:  # training reads an initialised memory
            teacher = self.net.pseudo_label_teacher(out, mem) / self.net_cfg.tau
            result["pseudo_labels"] = teacher[0].cpu().numpy()
        self.net.train(was)
        return result
