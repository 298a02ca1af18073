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

``make mutation`` runs it (not part of CI: about a quarter of an hour on two cores).
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
    Mutation("lambda_swapped", "salient / non-salient weights lambda, 1 - lambda", "issf/model/network.py",
             "salient, packing, weight=1.0 - cfg.lamb)\n"
             "        if cfg.non_salient_branch:\n"
             "            fused = fused + self.non_salient_unit(features, mask & ~salient, packing, weight=cfg.lamb)",
             "salient, packing, weight=cfg.lamb)\n"
             "        if cfg.non_salient_branch:\n"
             "            fused = fused + self.non_salient_unit(features, mask & ~salient, packing, weight=1.0 - cfg.lamb)",
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
             "issf/model/saliency.py", "salient[rows, lengths[rows] - 1] = True", "salient[rows, -1] = True",
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
             "return [(f[m], s[m]) for f, s, m in zip(feats, scores, member)]",
             "return [(f, s) for f, s, m in zip(feats, scores, member)]", (WIRING,)),
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
             "(collapses the pseudo-labels)", "conf/model/issf.yaml",
             "  memory_read: class0", "  memory_read: gt_classes", (LEARNING, MEMORY_READ)),
    Mutation("default_without_background_bank", "the recipes' memory without the background bank",
             "conf/model/issf.yaml", "  memory_background: true", "  memory_background: false", (HYPER,)),
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
    Mutation("config_fusion", "conf/model/issf.yaml fusion 0.4", "conf/model/issf.yaml",
             "fusion_base: 0.6", "fusion_base: 0.4", (HYPER,)),
    Mutation("config_lambda", "conf/model/issf.yaml lambda 0.2", "conf/model/issf.yaml",
             "lamb: 0.12", "lamb: 0.2", (HYPER,)),
    Mutation("config_slots", "conf/model/issf.yaml N = 10", "conf/model/issf.yaml",
             "memory_slots: 9", "memory_slots: 10", (HYPER,)),
    Mutation("recipe_official_compat", "thumos_official without the class-0 memory", "conf/experiment/thumos_official.yaml",
             "      memory_class0: true", "      memory_class0: false", (HYPER,)),
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
