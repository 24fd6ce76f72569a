"""Process group setup from the launcher's environment (torchrun, or Slurm through submitit), and the data
parallel wraps: DDP (a full replica per process) or FSDP (parameters, gradients and optimizer state sharded
across processes, for models that do not fit one GPU with DDP). The model knows nothing of this."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as torch_dist

from nanogpt import inductor
from nanogpt.device import Precision
from nanogpt.ranks import Dist, launch_env

log = logging.getLogger("nanogpt")

# A checkpoint's optimizer states are one state dict per optimizer, or, gathered from FSDP shards (which hold
# every optimizer's state together, keyed by parameter name), one entry under this key.
GATHERED_OPTIM_KEY = "fsdp"


def setup(device_type: str) -> Dist:
    """Join the process group when launched as several processes: NCCL on GPUs, gloo on CPUs."""
    dist = launch_env()
    if dist.enabled and not torch_dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            addr, port = _job_master()
            os.environ.setdefault("MASTER_ADDR", addr)
            os.environ.setdefault("MASTER_PORT", port)
        os.environ.setdefault("RANK", str(dist.rank))
        os.environ.setdefault("WORLD_SIZE", str(dist.world_size))
        os.environ.setdefault("LOCAL_RANK", str(dist.local_rank))
        backend = "nccl" if device_type == "cuda" else "gloo"
        # A rank that dies makes the others fail at their next collective within this time, not hang.
        timeout = datetime.timedelta(seconds=float(os.environ.get("NANOGPT_DIST_TIMEOUT", "600")))
        torch_dist.init_process_group(backend=backend, timeout=timeout)
    return dist


def _job_master() -> tuple[str, str]:
    """Where rank 0 hosts the rendezvous when torchrun did not say: the first node of the Slurm allocation
    (or this machine, for submitit's local executor), on a port derived from the job id so that jobs sharing a
    node do not collide. Set MASTER_ADDR / MASTER_PORT to choose them yourself."""
    env = os.environ
    if "SLURM_JOB_NODELIST" in env:
        from submitit.slurm.slurm import SlurmJobEnvironment  # parses Slurm's compressed node lists

        host = SlurmJobEnvironment().hostnames[0]
        job = env.get("SLURM_JOB_ID", "0")
    else:
        host, job = "127.0.0.1", env.get("SUBMITIT_LOCAL_JOB_ID", "0")
    return host, str(20000 + int(job) % 20000)


def broadcast(obj: Any, dist: Dist) -> Any:
    """Rank 0's value of `obj`, on every rank."""
    if not dist.enabled:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(x: torch.Tensor, dist: Dist) -> torch.Tensor:
    if dist.enabled:
        torch_dist.all_reduce(x)  # SUM: gloo has no AVG
        x /= dist.world_size
    return x


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch_dist.barrier()


def teardown(dist: Dist) -> None:
    if dist.enabled and torch_dist.is_initialized():
        # gloo's worker threads destroy a finished collective's work after the caller has moved on, and that needs
        # the GIL to let go of its tensors. Whatever frees the process group last (DDP's reducer, as train()
        # returns) joins those threads while holding the GIL: a rank that gets there within a few ms of its last
        # collective hangs for good. Sleeping releases the GIL so they finish first.
        time.sleep(0.05)
        torch_dist.destroy_process_group()


def any_rank(flag: bool, dist: Dist, device: torch.device) -> bool:
    """Whether `flag` is true on any process (a collective: every rank calls it)."""
    if not dist.enabled:
        return flag
    t = torch.tensor(float(flag), device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return bool(t.item())


def wrap(model: torch.nn.Module, parallel: str, dist: Dist, precision: Precision) -> torch.nn.Module:
    """The module a step calls: `model` itself on one process, else its DDP or FSDP wrap; compiled as asked."""
    if dist.enabled and parallel == "fsdp":
        return _fully_shard(model, dist, precision)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # No buffer broadcast before every forward: the model's only buffers (the rotary tables) are computed from
        # the config, the same on every rank.
        device = precision.device
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    return inductor.compile_module(model, precision.device) if precision.compile else model


def _fully_shard(model: torch.nn.Module, dist: Dist, precision: Precision) -> torch.nn.Module:
    """FSDP2, one shard group per block (only one block's full weights exist at a time), then the rest. Rank 0
    holds the whole model; the other ranks may hold it on the meta device (trainer._build_model): they allocate only
    their shards, which are filled from rank 0's weights, so every rank starts from the same ones."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    whole = model.state_dict() if dist.is_main else {}
    # Under bf16/fp16 autocast the weights are gathered in that dtype (half the traffic of fp32; autocast would cast
    # them at every op anyway) and the gradients reduced in fp32. The fp32 shards stay what the optimizer updates.
    low = precision.dtype if precision.dtype != torch.float32 else None
    policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32 if low is not None else None)
    for block in model.transformer.h:
        if precision.compile:
            # Each block compiled in place, before sharding: FSDP's hooks between blocks would cut a whole-model
            # graph at every block anyway, and the parameter names (and so the checkpoints) stay the same.
            inductor.compile_module(block, precision.device, in_place=True)
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device=precision.device)
    set_model_state_dict(model, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buffer in model.buffers():  # not persistent (rotary tables), so not in the state dict
        torch_dist.broadcast(buffer, src=0)
    return model


@contextlib.contextmanager
def gradient_sync(wrapped: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on accumulation micro-steps. Put the forward
    AND the backward inside: FSDP2 reads its flag during the backward (DDP when the forward runs)."""
    if not enabled and hasattr(wrapped, "no_sync"):  # DDP
        with wrapped.no_sync():
            yield
    elif not enabled and hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)
    else:  # the last micro-batch, or a single process
        yield


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state(
    model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], dist: Dist
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """A sharded model's weights and optimizer state gathered whole on rank 0's CPU (a collective: every rank
    calls it), so that checkpoints hold the same files with or without FSDP. Other ranks get empty values.
    Tied parameters (the embedding and the head) come back once, under the name save_model keeps."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=whole)
    opt_state = get_optimizer_state_dict(model, optimizers, options=whole)
    if not dist.is_main:
        return {}, []
    last_name: dict[int, str] = {}  # safetensors' save_model keeps the last name of a tied group (lm_head)
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in last_name:
            weights.pop(last_name[id(p)], None)
        last_name[id(p)] = name
    return weights, [{GATHERED_OPTIM_KEY: opt_state}]


def is_gathered_optim_state(states: list[dict]) -> bool:
    """Whether a checkpoint's optimizer states were gathered from FSDP shards by `full_state`."""
    return len(states) == 1 and GATHERED_OPTIM_KEY in states[0]


def load_sharded_optimizer_state(
    model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], states: list[dict]
) -> None:
    """Load a whole optimizer state (saved by `full_state`) into this rank's shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    whole = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizers, states[0][GATHERED_OPTIM_KEY], options=whole)


def gather_rng_states(dist: Dist, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG state (dropout), so a resumed run draws the same random numbers (a collective)."""
    mine = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        mine["mps"] = torch.mps.get_rng_state()
    if not dist.enabled:
        return [mine]
    states: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(states, mine)
    return states


def set_rng_state(states: list[dict[str, torch.Tensor]], dist: Dist, device: torch.device) -> None:
    """Restore this rank's RNG state as `gather_rng_states` saved it."""
    if len(states) != dist.world_size:
        log.warning("resuming on %d processes, saved with %d: dropout draws will differ", dist.world_size, len(states))
        return
    mine = states[dist.rank]
    torch.set_rng_state(mine["cpu"])
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], device)
    elif device.type == "mps" and "mps" in mine:
        torch.mps.set_rng_state(mine["mps"])
