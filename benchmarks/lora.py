"""LoRA against full finetuning on the same model: optimizer state + gradients, and the time of a training step.

    python benchmarks/lora.py [--layers 4 --heads 4 --embd 256 --block 128 --batch 4 --rank 8 --steps 12]

Both build the model and AdamW as run.py does (nanogpt.runs' LoRA attach, nanogpt.optim.build), in fp32 on the CPU,
and take `--steps` optimizer steps each, alternated, on random tokens (GPT-2's vocabulary); the memory is the bytes of
every gradient and optimizer-state tensor after a step, the time the median step after two warm-up steps.
Prints one line:
`lora: state+grads <MiB> vs full <MiB> (<pct>%); step <ms> vs full <ms> ms`.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import REPO  # noqa: F401  (benchmarks/ is on sys.path as a script; it puts the repo there)


class Setup:
    """A model and its AdamW, full or LoRA, stepping on the same random tokens."""

    def __init__(self, args: argparse.Namespace, adapted: bool):
        import torch

        from nanogpt import lora, optim
        from nanogpt.config import FinetuneConfig, ModelConfig, OptimConfig
        from nanogpt.model import GPT

        torch.manual_seed(0)
        shape = ModelConfig(n_layer=args.layers, n_head=args.heads, n_embd=args.embd, block_size=args.block,
                            vocab_size=50304)  # fmt: skip
        self.model = GPT(shape)
        if adapted:
            self.model = lora.attach(self.model, FinetuneConfig("lora", rank=args.rank))
        (self.adamw,) = optim.build(self.model, OptimConfig(), "cpu")
        self.x = torch.randint(0, 50257, (args.batch, args.block), generator=torch.Generator().manual_seed(0))
        self.times: list[float] = []

    def step(self) -> None:
        t = time.perf_counter()
        _, loss = self.model(self.x, self.x)
        loss.backward()
        self.adamw.step()
        self.adamw.zero_grad(set_to_none=False)  # keep the gradients to count them
        self.times.append(time.perf_counter() - t)

    def mib(self) -> float:
        """Gradients + optimizer state (AdamW's moments; its scalar step counters left out)."""
        grads = sum(p.grad.numel() * p.grad.element_size() for p in self.model.parameters() if p.grad is not None)
        state = sum(v.numel() * v.element_size() for s in self.adamw.state.values() for v in s.values() if v.dim())
        return (grads + state) / 2**20

    def ms(self) -> float:
        return 1000 * statistics.median(self.times[2:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("layers", 4), ("heads", 4), ("embd", 256), ("block", 128), ("batch", 4), ("rank", 8),
                          ("steps", 12)):  # fmt: skip
        p.add_argument(f"--{name}", type=int, default=default)
    args = p.parse_args()
    full, adapted = Setup(args, adapted=False), Setup(args, adapted=True)
    for _ in range(args.steps):  # alternated, so that a busy machine slows both alike
        full.step()
        adapted.step()
    full_mib, full_ms, lora_mib, lora_ms = full.mib(), full.ms(), adapted.mib(), adapted.ms()
    print(
        f"lora: state+grads {lora_mib:.2f} MiB vs full {full_mib:.1f} MiB ({100 * lora_mib / full_mib:.1f}%); "
        f"step {lora_ms:.0f} vs full {full_ms:.0f} ms ({args.layers}x{args.embd}, block {args.block}, "
        f"batch {args.batch}, rank {args.rank})"
    )


if __name__ == "__main__":
    main()
