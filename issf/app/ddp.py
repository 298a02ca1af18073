"""``strategy=ddp`` under Hydra.

Lightning starts each extra rank by re-running the command line. In a multirun that command line
is the whole sweep, so every child would start the sweep again (docs/framework.md, item 1).
Children instead get this job's own overrides in RUN mode and write into this job's directory;
after the job the launching process reaps them and resets the distributed state so the next job
of the sweep can start its own.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytorch_lightning as pl


def launching_process() -> bool:
    """False in the DDP ranks a job starts through the command line (they share its directory)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _child_command(local_rank: int) -> tuple[list[str], str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hc = HydraConfig.get()
    command = [sys.executable, os.path.abspath(sys.argv[0]), *hc.overrides.task,
               "hydra.mode=RUN", f'hydra.run.dir="{hc.runtime.output_dir}"',
               f"hydra.job.name=train_ddp_process_{local_rank}", "hydra.output_subdir=null",
               f"hydra.job.chdir={bool(hc.job.chdir)}"]
    return command, get_original_cwd()


def patch_ddp_launcher() -> None:
    from lightning_fabric.strategies.launchers import subprocess_script as fabric_launcher
    from pytorch_lightning.strategies.launchers import subprocess_script as pl_launcher

    fabric_launcher._hydra_subprocess_cmd = _child_command
    pl_launcher._hydra_subprocess_cmd = _child_command  # bound at import time there: patch both


def teardown_ddp_children(trainer: pl.Trainer) -> None:
    children = [p for p in getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or []
                if isinstance(p, subprocess.Popen)]  # script launcher only (fork/spawn join their own)
    if not children:  # only the process that launched the children tears down
        return
    import torch.distributed as dist

    for proc in children:
        proc.wait()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
