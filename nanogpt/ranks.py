"""Who this process is in a launch: its rank, local rank and the world size, as torchrun, Slurm (one task per GPU)
or submitit's local launcher set them. Read from the environment alone, without torch, so that Hydra's run-dir
resolvers can ask before any job imports it."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_env() -> Dist:
    """Rank, local rank and world size as torchrun sets them, else as Slurm does (one task per GPU)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return Dist(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return Dist(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"]))
    if int(env.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1:  # hydra/launcher=local with tasks_per_node > 1
        ntasks = int(env["SUBMITIT_LOCAL_NTASKS"])
        return Dist(int(env["SUBMITIT_LOCAL_GLOBALID"]), int(env["SUBMITIT_LOCAL_LOCALID"]), ntasks)
    return Dist()
