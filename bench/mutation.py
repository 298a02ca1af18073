"""Mutation check: do the tests catch a wrong model?

Each mutation is a small, plausible bug (file, exact old text, new text) and the test files that
should catch it. The script copies the repository (``git ls-files``, tracked and untracked but not
ignored files; ``.venv`` stays out) into a temporary folder, runs the union of the listed test
files once unmutated (they must pass), then applies the mutations one at a time and runs their
test files with the current interpreter. A mutation is *caught* when at least one test fails, *not
caught* when all pass, and *not applicable* when its old text does not occur exactly once (the
code changed under it). The report (date, commit, per-mutation result, totals) goes to
``bench/mutation_report.md``.

    python bench/mutation.py [--only NAME ...] [--list] [--report PATH] [--timeout S]

``make mutation`` runs it (not part of CI: about 20 minutes on two cores).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REPORT = ROOT / "bench" / "mutation_report.md"

LOSSES = "tests/model/test_losses.py"
WIRING = "tests/model/test_wiring.py"
SCHEDULE = "tests/train/test_schedule.py"
LEARNING = "tests/model/test_learning.py"
HYPER = "tests/app/test_hyperparameters.py"
MODEL = "tests/model/test_model.py"
DATAMODULE = "tests/data/test_datamodule.py"
MEMORY_READ = "tests/model/test_memory_read.py"
# issue #29: tests aimed at evaluation wiring, data conversion and splitting, checkpoints and resume,
# report and logs
EVAL_WIRING = "tests/eval/test_evaluation_wiring.py"
LOCALIZE_CLASSES = "tests/eval/test_localize_classes.py"
EVAL_BOUNDARIES = "tests/eval/test_interval_boundaries.py"
DATA_BOUNDARIES = "tests/data/test_interval_boundaries.py"
PAIRING = "tests/data/test_convert_pairing.py"
SPLIT = "tests/data/test_split_determinism.py"
EVAL_MODE = "tests/model/test_eval_mode.py"
REPEATED_VALIDATION = "tests/train/test_repeated_validation.py"
ATOMIC = "tests/train/test_checkpoint_atomicity.py"
OPTIMIZER = "tests/train/test_optimizer.py"
CSV_RESUME = "tests/train/test_csv_resume.py"
REPORT_CURVES = "tests/analysis/test_report_curves.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    description: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS: list[Mutation] = [
    # ---------------------------------------------------------------- losses
    Mutation("nce_sign", "sign flip in the normalised cross-entropy", "issf/model/losses.py",
             "return -(targets * torch.log(probs.clamp_min(1e-12))).sum(-1)",
             "return (targets * torch.log(probs.clamp_min(1e-12))).sum(-1)", (LOSSES, LEARNING)),
    Mutation("attention_loss_sign", "sign flip in the attention loss (largest minus smallest)", "issf/model/losses.py",
             "return (bottom.sum(1) - top.sum(1)) / k", "return (top.sum(1) - bottom.sum(1)) / k", (LOSSES, LEARNING)),
    Mutation("pseudo_label_sign", "sign flip in the pseudo-label cross-entropy", "issf/model/losses.py",
             "ce = -(target * F.log_softmax(student.float() / tau, dim=-1)).sum(-1)",
             "ce = (target * F.log_softmax(student.float() / tau, dim=-1)).sum(-1)", (LOSSES, LEARNING)),
    Mutation("teacher_not_detached", "`.detach()` dropped on the pseudo-label teacher", "issf/model/losses.py",
             "F.softmax(teacher.detach().float() / tau", "F.softmax(teacher.float() / tau", (LOSSES, WIRING)),
    Mutation("student_without_tau", "temperature applied to the teacher only", "issf/model/losses.py",
             "F.log_softmax(student.float() / tau, dim=-1)", "F.log_softmax(student.float(), dim=-1)", (LOSSES,)),
    Mutation("background_target_zero", "background target [y, 0] instead of [y, 1]", "issf/model/losses.py",
             "torch.cat([labels, zeros + 1], -1)", "torch.cat([labels, zeros], -1)", (LOSSES, WIRING)),
    Mutation("attention_k_ratio", "attention loss with k = T // 4 instead of T // ratio", "issf/model/losses.py",
             "torch.div(lengths, ratio, rounding_mode=\"floor\")", "torch.div(lengths, 4.0, rounding_mode=\"floor\")",
             (LOSSES,)),
    Mutation("attention_loss_padding", "attention loss ranks padded positions too", "issf/model/losses.py",
             "top = torch.sort(attention.masked_fill(~mask, float(\"-inf\")), dim=1, descending=True).values",
             "top = torch.sort(attention, dim=1, descending=True).values", (LOSSES,)),
    # ---------------------------------------------------------------- network wiring
    Mutation("fusion_swapped", "inference fusion 0.4 base / 0.6 saliency instead of 0.6 / 0.4", "issf/model/network.py",
             "w = self.cfg.fusion_base if out.saliency is not None else 1.0",
             "w = 1.0 - self.cfg.fusion_base if out.saliency is not None else 1.0", (WIRING,)),
    Mutation("cas_without_attention", "attention factor removed from the CAS", "issf/model/network.py",
             "cas = frames * out.base.attention[..., None] * mask[..., None]", "cas = frames * mask[..., None]",
             (WIRING,)),
    Mutation("teacher_is_base", "pseudo-label teacher = the base branch's own logits", "issf/model/network.py",
             "            return out.saliency.logits", "            return out.base.logits", (WIRING,)),
    Mutation("teacher_mix_swapped", "pseudo-label target 0.8 memory + 0.2 saliency", "issf/model/network.py",
             "return mix * memory.logits + (1.0 - mix) * out.saliency.logits",
             "return (1.0 - mix) * memory.logits + mix * out.saliency.logits", (WIRING,)),
    Mutation("lambda_swapped", "salient unit weighted lambda instead of 1 - lambda", "issf/model/network.py",
             "salient, packing, weight=1.0 - cfg.lamb, counts=counts)",
             "salient, packing, weight=cfg.lamb, counts=counts)",
             (WIRING,)),
    Mutation("non_salient_is_salient", "non-salient set = the salient set", "issf/model/network.py",
             "self.non_salient_unit(features, mask & ~salient, packing", "self.non_salient_unit(features, salient, packing",
             (WIRING,)),
    Mutation("w_bg_dropped", "background loss weight 1 instead of w_bg", "issf/model/network.py",
             "total = loss_fg + cfg.w_bg * loss_bg + cfg.w_att * terms[\"att\"]",
             "total = loss_fg + loss_bg + cfg.w_att * terms[\"att\"]", (WIRING,)),
    Mutation("memory_nce_weight", "memory branch NCE weight 1 instead of w_memory", "issf/model/network.py",
             "loss_fg = loss_fg + cfg.w_memory * nce(mem.video_fg, fg)", "loss_fg = loss_fg + nce(mem.video_fg, fg)",
             (WIRING,)),
    # ---------------------------------------------------------------- saliency
    Mutation("no_predecessor", "predecessor marking of selected snippets removed", "issf/model/saliency.py",
             "    salient[:, :-1] |= selected[:, 1:]\n", "", (WIRING, MODEL)),
    Mutation("wrap_to_padding", "wrap goes to the batch's last column, not the video's last snippet",
             "issf/model/saliency.py", "salient[rows, last] |= selected[:, 0]", "salient[rows, -1] |= selected[:, 0]",
             (WIRING, MODEL)),
    Mutation("k_without_minus_one", "K = floor(pT) instead of floor(pT) - 1", "issf/model/saliency.py",
             "torch.floor(lengths.double() * ratio).long() - 1", "torch.floor(lengths.double() * ratio).long()",
             (WIRING, MODEL)),
    # ---------------------------------------------------------------- memory
    Mutation("memory_reads_class0", "memory read at class 0 for every class (per-class mode)", "issf/model/network.py",
             "            rows = list(classes)\n        if self.cfg.memory_background:\n            rows.append(",
             "            rows = [0] * len(classes)\n        if self.cfg.memory_background:\n            rows.append(",
             (WIRING,)),
    Mutation("background_bank_not_read", "the background bank is filled but never read", "issf/model/network.py",
             "            rows.append(self._background_row)\n", "            pass\n", (MEMORY_READ,)),
    Mutation("background_bank_ranked_by_class0", "the background bank ranked by the class-0 score",
             "issf/model/network.py", "scores = torch.cat([scores[:, :row], full[:, -1:]], 1)",
             "scores = torch.cat([scores[:, :row], full[:, :1]], 1)", (MEMORY_READ,)),
    Mutation("memory_read_constant", "memory read with the video-mean query: one output for every snippet",
             "issf/model/network.py",
             "read = packed_attention(out.fused, torch.cat(keys)",
             "read = packed_attention(out.packing.repeat(torch.stack([f.mean(0) for f in out.packing.split(out.fused)])), "
             "torch.cat(keys)", (WIRING,)),
    Mutation("memory_candidates_all", "memory candidates = all snippets, not the salient ones", "issf/model/network.py",
             "return list(zip(feats, scores, member))",
             "return [(f, s, torch.ones_like(m)) for f, s, m in zip(feats, scores, member)]", (WIRING,)),
    Mutation("memory_keeps_lowest", "memory keeps the N lowest-scored candidates", "issf/model/memory.py",
             "top = torch.argsort(pool_score, descending=True, stable=True)[:n]",
             "top = torch.argsort(pool_score, descending=False, stable=True)[:n]", (SCHEDULE, MODEL)),
    Mutation("init_never_initialized", "initialize_memory never sets `initialized`", "issf/train/module.py",
             "        self.net.memory.initialized.fill_(True)\n", "", (SCHEDULE,)),
    Mutation("memory_start_shifted", "memory read from epoch init + 2", "issf/model/config.py",
             "return self.memory_init_epoch + 1", "return self.memory_init_epoch + 2", (SCHEDULE,)),
    Mutation("memory_start_early", "memory read from the initialisation epoch itself", "issf/model/config.py",
             "return self.memory_init_epoch + 1", "return self.memory_init_epoch", (SCHEDULE,)),
    Mutation("w_pl_no_switch", "pseudo-label weight stays w_pl once the memory starts", "issf/model/network.py",
             "            w_pl = cfg.w_pl_memory\n", "            w_pl = cfg.w_pl\n", (SCHEDULE,)),
    Mutation("ema_one_minus_m", "EMA momentum 1 - m", "issf/model/memory.py",
             "return 0.5 * math.log(math.exp(epoch / schedule_epochs) + 1.0)",
             "return 1.0 - 0.5 * math.log(math.exp(epoch / schedule_epochs) + 1.0)", (SCHEDULE, MODEL)),
    Mutation("ema_boundary", "EMA from epoch index >= ema_epoch instead of >", "issf/model/memory.py",
             "if epoch > self.ema_epoch:", "if epoch >= self.ema_epoch:", (SCHEDULE, MODEL)),
    Mutation("batch_loss_mean", "batch loss = mean over videos instead of the sum", "issf/train/module.py",
             "return terms[\"total\"].sum()", "return terms[\"total\"].mean()", (SCHEDULE,)),
    Mutation("default_gt_classes_read", "the recipes' memory read back to the per-class read "
             "(collapses the pseudo-labels)", "issf/model/config.py",
             '    memory_read: str = "class0"', '    memory_read: str = "gt_classes"', (LEARNING, MEMORY_READ)),
    Mutation("default_with_background_bank", "the network's default memory with the background bank",
             "issf/model/config.py", "    memory_background: bool = False", "    memory_background: bool = True",
             (HYPER,)),
    Mutation("recipe_selects_on_test", "thumos_full selects its best checkpoint on the test split",
             "conf/experiment/thumos_full.yaml", "    val_fraction: 0.2", "    val_fraction: 0.0", (HYPER,)),
    # ---------------------------------------------------------------- data and evaluation
    Mutation("evaluator_fixed_064", "evaluator converts with 0.64 s instead of the file's snippet_seconds",
             "issf/eval/evaluator.py", "self.snippet_seconds = snippet_seconds", "self.snippet_seconds = 0.64", (WIRING,)),
    Mutation("module_evaluator_064", "the module builds its evaluators with 0.64 s", "issf/train/module.py",
             "VideoEvaluator(dm.ground_truth(data_split), self.eval_cfg, dm.snippet_seconds)",
             "VideoEvaluator(dm.ground_truth(data_split), self.eval_cfg, 0.64)", (WIRING,)),
    Mutation("labels_by_position", "batch labels by split position instead of file index", "issf/data/datamodule.py",
             "self.file.labels[self.indices[position]]", "self.file.labels[position]", (WIRING, DATAMODULE)),
    Mutation("sampling_ignores_epoch", "training sampling seed ignores the epoch", "issf/data/datamodule.py",
             "np.random.default_rng([self.seed, self.epoch, 7])", "np.random.default_rng([self.seed, 7])", (DATAMODULE,)),
    # ---------------------------------------------------------------- configuration
    Mutation("config_fusion", "network default fusion 0.4 (the model.network schema)", "issf/model/config.py",
             "fusion_base: float = 0.6", "fusion_base: float = 0.4", (HYPER,)),
    Mutation("config_lambda", "network default lambda 0.2 (the model.network schema)", "issf/model/config.py",
             "lamb: float = 0.12", "lamb: float = 0.2", (HYPER,)),
    Mutation("config_slots", "network default N = 10 (the model.network schema)", "issf/model/config.py",
             "memory_slots: int = 9", "memory_slots: int = 10", (HYPER,)),
    Mutation("recipe_official_compat", "thumos_official without the class-0 memory", "conf/experiment/thumos_official.yaml",
             "      memory_class0: true", "      memory_class0: false", (HYPER,)),
    # ---------------------------------------------------------------- evaluation wiring (issue #29)
    Mutation("eval_ambiguous_not_passed", "EvaluationConfig builds its metric without the ambiguous filter",
             "issf/eval/evaluator.py", "filter_ambiguous=self.filter_ambiguous,", "filter_ambiguous=False,",
             (EVAL_WIRING,)),
    Mutation("metric_ambiguous_ignored", "TemporalDetectionMAP drops its filter_ambiguous argument",
             "issf/eval/metric.py", "self.filter_ambiguous = bool(filter_ambiguous)", "self.filter_ambiguous = False",
             (EVAL_WIRING,)),
    Mutation("eval_return0_not_passed", "EvaluationConfig builds its metric without compat_locmap_return0",
             "issf/eval/evaluator.py", "compat_locmap_return0=self.compat_locmap_return0,",
             "compat_locmap_return0=False,", (EVAL_WIRING,)),
    Mutation("eval_clip_protocol_swapped", "the evaluator clips W-TALC detections and leaves ActivityNet's unclipped",
             "issf/eval/evaluator.py", "clip_to = None if cfg.protocol == \"wtalc\" else",
             "clip_to = None if cfg.protocol == \"anet\" else", (EVAL_WIRING,)),
    Mutation("eval_keeps_clipped_to_nothing", "detections clipped to zero length are kept (start at the duration)",
             "issf/eval/evaluator.py", "dets = dets.select(dets.end > dets.start)",
             "dets = dets.select(dets.end >= dets.start)", (EVAL_WIRING,)),
    Mutation("evaluator_metric_not_reset", "VideoEvaluator.reset leaves the metric's detections in place",
             "issf/eval/evaluator.py", "        self.metric.reset()\n", "", (EVAL_WIRING, REPEATED_VALIDATION)),
    Mutation("module_evaluator_not_reset", "the module never resets its evaluator between validations",
             "issf/train/module.py", "        evaluator.reset()\n", "", (REPEATED_VALIDATION,)),
    Mutation("module_cls_map_not_reset", "the module never resets its classification mAP between validations",
             "issf/train/module.py", "        evaluator.reset()\n        self.cls_map[split].reset()\n",
             "        evaluator.reset()\n", (REPEATED_VALIDATION,)),
    Mutation("localize_score_by_column", "contrast_x_video multiplies by the score of the column's index, not the class's",
             "issf/eval/localize.py", "sc = sc * vs[classes].astype(np.float64)[col]", "sc = sc * vs.astype(np.float64)[col]",
             (LOCALIZE_CLASSES,)),
    Mutation("localize_label_is_column", "detections labelled by their column among the selected classes",
             "issf/eval/localize.py", "        classes[col[idx]],\n", "        col[idx],\n", (LOCALIZE_CLASSES,)),
    Mutation("localize_first_columns", "the CAS of the first len(classes) columns instead of the selected classes",
             "issf/eval/localize.py", "x = upsample_cas(cas[:, classes].astype(np.float64), factor)",
             "x = upsample_cas(cas[:, : len(classes)].astype(np.float64), factor)", (LOCALIZE_CLASSES,)),
    Mutation("dropout_at_eval", "the embedding's dropout stays on in eval mode", "issf/model/embedding.py",
             "if not self.training or p == 0.0:", "if p == 0.0:", (EVAL_MODE, REPEATED_VALIDATION)),
    Mutation("inspect_video_train_mode", "inspect_video runs the network in the caller's (training) mode",
             "issf/train/module.py", "        was = self.net.training\n        self.net.eval()\n",
             "        was = self.net.training\n", (EVAL_MODE,)),
    # ---------------------------------------------------------------- boundaries (issue #29)
    Mutation("overlap_touching", "intervals that only touch count as overlapping (ambiguous filter)",
             "issf/eval/intervals.py", "out[rows] = (inter > 0).any(axis=1)", "out[rows] = (inter >= 0).any(axis=1)",
             (EVAL_BOUNDARIES, EVAL_WIRING)),
    Mutation("clip_past_end_strict", "a segment starting exactly at the duration is not past the end",
             "issf/data/prepare/validate.py", "past = (lo >= duration) & (hi > duration)",
             "past = (lo > duration) & (hi > duration)", (DATA_BOUNDARIES,)),
    Mutation("clip_outside_inclusive", "a segment ending exactly at the duration counts as outside",
             "issf/data/prepare/validate.py", "outside = (lo < 0) | (hi > duration)",
             "outside = (lo < 0) | (hi >= duration)", (DATA_BOUNDARIES,)),
    # ---------------------------------------------------------------- conversion and splitting (issue #29)
    Mutation("wtalc_key_by_position", "W-TALC features looked up by output position (wrong video after a skip)",
             "issf/data/prepare/wtalc.py", "labels, key=i))", "labels, key=len(videos)))", (PAIRING,)),
    Mutation("subset_ambiguous_not_reindexed", "a split's ambiguous intervals keep the file's video indices",
             "issf/data/annotations.py", "ambiguous_video=remap[self.ambiguous_video[amb_keep]],",
             "ambiguous_video=self.ambiguous_video[amb_keep],", (PAIRING,)),
    Mutation("split_unseeded", "validation split drawn from an unseeded generator", "issf/data/datamodule.py",
             "rng = np.random.default_rng([self.seed, 11])", "rng = np.random.default_rng()", (SPLIT,)),
    Mutation("split_global_rng", "validation split drawn from numpy's global random state", "issf/data/datamodule.py",
             "rng = np.random.default_rng([self.seed, 11])", "rng = np.random", (SPLIT,)),
    Mutation("split_ignores_seed", "validation split seeded with a constant instead of the run seed",
             "issf/data/datamodule.py", "rng = np.random.default_rng([self.seed, 11])",
             "rng = np.random.default_rng(11)", (SPLIT,)),
    Mutation("split_val_also_trained", "validation videos are not removed from the training videos",
             "issf/data/datamodule.py", "self.val_indices, train = train[chosen], train[~chosen]",
             "self.val_indices = train[chosen]", (SPLIT,)),
    # ---------------------------------------------------------------- checkpoints and optimizer (issue #29)
    Mutation("checkpoint_in_place", "checkpoints written in place (no temporary file and rename)",
             "issf/train/checkpoints.py", "with atomic_write(path, \"wb\") as f:", "with open(path, \"wb\") as f:",
             (ATOMIC,)),
    Mutation("atomic_write_keeps_temp_on_interrupt", "atomic_write removes its temporary only on an Exception",
             "issf/utils/io.py", "    except BaseException:\n        tmp.unlink(missing_ok=True)",
             "    except Exception:\n        tmp.unlink(missing_ok=True)", (ATOMIC,)),
    Mutation("trainer_plain_checkpoint_io", "the trainer config writes checkpoints with Lightning's plain plugin",
             "conf/trainer/default.yaml", "  - _target_: issf.train.checkpoints.AtomicCheckpointIO",
             "  - _target_: lightning_fabric.plugins.io.torch_io.TorchCheckpointIO", (ATOMIC,)),
    Mutation("optimizer_adamw", "AdamW (decoupled weight decay) instead of Adam with coupled L2",
             "issf/train/module.py", "return torch.optim.Adam(", "return torch.optim.AdamW(", (OPTIMIZER,)),
    Mutation("optimizer_betas_fixed", "the optimizer ignores the configured betas", "issf/train/module.py",
             "betas=tuple(cfg[\"betas\"])", "betas=(0.9, 0.999)", (OPTIMIZER,)),
    Mutation("optimizer_eps_default", "the optimizer's default eps 1e-6", "issf/train/module.py",
             "eps=cfg.get(\"eps\", 1e-8)", "eps=cfg.get(\"eps\", 1e-6)", (OPTIMIZER,)),
    Mutation("optimizer_no_weight_decay", "the configured weight decay never reaches the optimizer",
             "issf/train/module.py", "weight_decay=cfg[\"weight_decay\"], fused", "weight_decay=0.0, fused",
             (OPTIMIZER,)),
    Mutation("optimizer_config_adamw", "the recipes' optimizer config builds AdamW instead of Adam",
             "conf/model/issf.yaml", "_target_: torch.optim.Adam\n", "_target_: torch.optim.AdamW\n", (OPTIMIZER,)),
    # ---------------------------------------------------------------- resume history and report (issue #29)
    Mutation("csv_keeps_relogged_epoch", "a resumed CSV log keeps the rows of the epoch it logs again",
             "issf/train/loggers.py", "return float(row[\"epoch\"]) < epoch", "return float(row[\"epoch\"]) <= epoch",
             (CSV_RESUME,)),
    Mutation("log_history_off_by_one", "LogHistoryOnResume cuts the history one epoch late",
             "issf/train/callbacks.py", "logger.keep_epochs_before(trainer.current_epoch,",
             "logger.keep_epochs_before(trainer.current_epoch + 1,", (CSV_RESUME,)),
    Mutation("report_best_wrong_axis", "best of evaluations taken per epoch over seeds instead of per run",
             "issf/analysis/report.py", "\"best\": (float(values.max(1).mean()), float(values.max(1).std(ddof=ddof))),",
             "\"best\": (float(values.max(0).mean()), float(values.max(0).std(ddof=ddof))),", (REPORT_CURVES,)),
    Mutation("report_last_is_first", "the report's last evaluation is the first one", "issf/analysis/report.py",
             "\"last\": (float(values[:, -1].mean()), float(values[:, -1].std(ddof=ddof))),",
             "\"last\": (float(values[:, 0].mean()), float(values[:, 0].std(ddof=ddof))),", (REPORT_CURVES,)),
    Mutation("report_curve_std_population", "curve statistics with the population std over seeds",
             "issf/analysis/report.py", "ddof = 1 if len(curves) > 1 else 0", "ddof = 0", (REPORT_CURVES,)),
    Mutation("report_curve_epoch_label", "curve points labelled by the 0-based epoch, not epochs trained",
             "issf/analysis/report.py", "points = {int(r[\"epoch\"]) + 1: float(r[column])",
             "points = {int(r[\"epoch\"]): float(r[column])", (REPORT_CURVES,)),
    Mutation("report_curve_epochs_union", "curve epochs are the union over seeds (a seed without the epoch counts)",
             "issf/analysis/report.py", "epochs = sorted(set.intersection(*(set(c) for c in curves)))",
             "epochs = sorted(set.union(*(set(c) for c in curves)))\n        curves = [{e: c.get(e, 0.0) for e in epochs} "
             "for c in curves]", (REPORT_CURVES,)),
]


# -------------------------------------------------------------------------------------------------
def repository_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and not f.startswith(".venv")})


def copy_repository(dest: Path) -> None:
    for rel in repository_files():
        src = ROOT / rel
        if src.is_file() and not src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def test_env(copy: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("ISSF_ROOT", None)
    return env


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, list[str], dict, float]:
    """('passed' | 'failed' | 'timeout' | 'error rc=N', failed test ids, {test file: [failed, run]},
    seconds)."""
    xml = copy / ".mutation-junit.xml"
    xml.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=test_env(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", [], {}, time.perf_counter() - start
    seconds = time.perf_counter() - start
    failed, per_file = [], {Path(t).stem: [0, 0] for t in tests}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            module = case.get("classname", "").rsplit(".", 1)[-1]
            counts = per_file.setdefault(module, [0, 0])
            counts[1] += 1
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{module}::{case.get('name')}")
                counts[0] += 1
    status = {0: "passed", 1: "failed"}.get(proc.returncode, f"error rc={proc.returncode}")
    if status.startswith("error"):
        failed.append(proc.stdout[-400:] + proc.stderr[-400:])
    return status, failed, per_file, seconds


def commit() -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return rev + (" (with uncommitted changes)" if dirty else "")


def result_label(status: str) -> str:
    return {"failed": "caught", "passed": "NOT CAUGHT", "timeout": "caught (timeout)"}.get(status, status)


def write_report(path: Path, rows: list[dict], revision: str, baseline_seconds: float, total_seconds: float) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["result"]] = counts.get(r["result"], 0) + 1
    lines = [
        "# Mutation report",
        "",
        "Written by `make mutation` (`bench/mutation.py`): each mutation is a small plausible bug, applied alone",
        "to a copy of the repository; its test files are run and the mutation is *caught* when a test fails.",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- commit: {revision}",
        f"- python {platform.python_version()}, {os.environ.get('OMP_NUM_THREADS', '?')} OMP thread(s), "
        f"{os.cpu_count()} CPUs",
        f"- unmutated test files: all passed in {baseline_seconds:.0f} s; whole run {total_seconds / 60:.1f} min",
        "- totals: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f" (of {len(rows)})",
        "",
        "| # | mutation | file | bug | result | failed / run, per test file | first failing tests | s |",
        "|---:|---|---|---|---|---|---|---:|",
    ]
    for i, r in enumerate(rows, 1):
        files = ", ".join(f"{name}.py {f}/{n}" for name, (f, n) in r["per_file"].items()) or "-"
        failing = "; ".join(r["failed"][:2]) + (f"; +{len(r['failed']) - 2} more" if len(r["failed"]) > 2 else "")
        failing = failing.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {i} | `{r['name']}` | `{r['file']}` | {r['description']} | {r['result']} | {files} | "
                     f"{failing} | {r['seconds']:.0f} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--report", type=Path, default=REPORT, help=f"report path (default {REPORT.relative_to(ROOT)})")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per test run")
    args = parser.parse_args(argv)
    mutations = MUTATIONS
    if args.only:
        unknown = set(args.only) - {m.name for m in MUTATIONS}
        if unknown:
            parser.error(f"unknown mutations: {sorted(unknown)}")
        mutations = [m for m in MUTATIONS if m.name in args.only]
    if args.list:
        for m in mutations:
            print(f"{m.name:28s} {m.file:32s} {m.description}")
        return 0
    started = time.perf_counter()
    revision = commit()  # what the copy holds
    with tempfile.TemporaryDirectory(prefix="issf-mutation-") as tmp:
        copy = Path(tmp) / "repo"
        copy_repository(copy)
        check = subprocess.run([sys.executable, "-c", "import issf; print(issf.__file__)"], cwd=copy,
                               env=test_env(copy), capture_output=True, text=True)
        if not check.stdout.strip().startswith(str(copy)):
            print(f"the copy does not import its own issf: {check.stdout}{check.stderr}", file=sys.stderr)
            return 2
        union = tuple(sorted({t for m in mutations for t in m.tests}))
        print(f"unmutated: {' '.join(union)}", flush=True)
        status, failed, _, baseline_seconds = run_tests(copy, union, args.timeout)
        if status != "passed":
            print(f"the unmutated tests do not pass ({status}): {failed}", file=sys.stderr)
            return 2
        rows = []
        for m in mutations:
            target = copy / m.file
            original = target.read_text() if target.exists() else ""
            row = {"name": m.name, "file": m.file, "description": m.description, "tests": m.tests, "failed": [],
                   "per_file": {}, "seconds": 0.0}
            if original.count(m.old) != 1:
                row["result"] = "not applicable"
                row["failed"] = [f"old text found {original.count(m.old)} times"]
            else:
                target.write_text(original.replace(m.old, m.new))
                try:
                    status, row["failed"], row["per_file"], row["seconds"] = run_tests(copy, m.tests, args.timeout)
                finally:
                    target.write_text(original)
                row["result"] = result_label(status)
            rows.append(row)
            print(f"{m.name:28s} {row['result']:16s} {row['seconds']:6.0f} s  {'; '.join(row['failed'][:2])}", flush=True)
    text = write_report(args.report, rows, revision, baseline_seconds, time.perf_counter() - started)
    print("\n" + text.split("\n\n")[2].splitlines()[-1])
    return 0 if all(r["result"].startswith("caught") or r["result"] == "not applicable" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
