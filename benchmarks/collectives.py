"""Count the collectives each process issues while it runs `run.py`: how many, how many bytes, in which dtypes.

    python -m torch.distributed.run --nproc-per-node=2 benchmarks/collectives.py <out dir> [run.py overrides]

Runs `run.py` with the overrides in every process, with torch.distributed's reduce-scatter, all-gather and
all-reduce functions wrapped to count their calls, and writes `<out dir>/collectives-rank<R>.json`:
`{"reduce_scatter": {"calls": n, "bytes": b, "dtypes": ["torch.float32"]}, ...}`. FSDP2 issues one
reduce-scatter per shard group each time it syncs gradients and one all-gather per group per forward (and per
backward, once resharded), so the counts say whether gradient accumulation syncs once per step, and the dtypes
whether the weights travel in bf16 (tests/test_cluster.py, benchmarks/gpu_check.py). Collectives issued through
DTensor's functional ops (gathering a checkpoint, clipping the gradient norm) are not counted.
"""

from __future__ import annotations

import functools
import json
import os
import runpy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# torch.distributed function -> (the name it is counted under, the position and keyword of the tensor it sends).
COUNTED = {
    "reduce_scatter_single": ("reduce_scatter", 1, "input"),  # what FSDP2 calls in torch 2.13
    "reduce_scatter_tensor": ("reduce_scatter", 1, "input"),
    "all_gather_single": ("all_gather", 1, "input_tensor"),  # FSDP2's all-gather of a shard group's parameters
    "all_gather_into_tensor": ("all_gather", 1, "input_tensor"),
    "all_reduce": ("all_reduce", 0, "tensor"),
}


def _counting(fn: Callable, name: str, position: int, keyword: str, counts: dict[str, dict[str, Any]]) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tensor = args[position] if len(args) > position else kwargs[keyword]
        entry = counts.setdefault(name, {"calls": 0, "bytes": 0, "dtypes": []})
        entry["calls"] += 1
        entry["bytes"] += tensor.numel() * tensor.element_size()
        if str(tensor.dtype) not in entry["dtypes"]:
            entry["dtypes"].append(str(tensor.dtype))
        return fn(*args, **kwargs)

    return wrapper


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    import torch.distributed as dist

    counts: dict[str, dict[str, Any]] = {}
    # Patched on torch.distributed, which FSDP calls through; torch's own internal calls are not double counted.
    for attr, (name, position, keyword) in COUNTED.items():
        if hasattr(dist, attr):
            setattr(dist, attr, _counting(getattr(dist, attr), name, position, keyword, counts))
    sys.argv = [str(REPO / "run.py"), *overrides]
    sys.path.insert(0, str(REPO))
    try:
        runpy.run_path(str(REPO / "run.py"), run_name="__main__")
    finally:
        out.mkdir(parents=True, exist_ok=True)
        rank = os.environ.get("RANK", "0")
        (out / f"collectives-rank{rank}.json").write_text(json.dumps(counts, indent=1))


if __name__ == "__main__":
    main()
