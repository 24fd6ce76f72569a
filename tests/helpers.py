"""What the tests share, as plain functions: the repo's paths and the offline environment, running the entry points
(directly, under torchrun, in the background), finding run and sweep dirs, reading what a run wrote (metrics,
losses, weights, status), comparing two runs, composing a config with Hydra, and a tiny GPT for unit tests.

Fixtures live in conftest.py; test modules import from here and never from each other."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nanogpt.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
# The real tiny Shakespeare: $NANOGPT_SHAKESPEARE, else ../shared/data/tinyshakespeare.txt beside the repo.
SHAKESPEARE_DEFAULT = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
SHAKESPEARE = Path(os.environ["NANOGPT_SHAKESPEARE"]) if os.environ.get("NANOGPT_SHAKESPEARE") else SHAKESPEARE_DEFAULT

# Offline and quiet: no hub retries, no wandb prompts, deterministic threads.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "NANOGPT_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",  # tiny models: one thread is fastest, and no oversubscription on a busy machine
}

# Flags for a model and loop that train in seconds on a CPU.
TINY = [
    "model=tiny",
    "device=cpu",
    "model.block_size=32",
    "train.batch_size=4",
    "train.eval_iters=2",
    "train.log_interval=1",
    "optim.warmup_iters=2",
]

# A run long enough to be interrupted mid-way (about 5 ms a step on a free core), short enough for a test.
LONG_ITERS = 800
LONG = [f"train.max_iters={LONG_ITERS}", "train.log_interval=5", "train.eval_interval=250"]
PREEMPT_AT = 20  # a LONG job is preempted once it has logged this step

# What losses() keeps of each metrics record: the timing fields differ between runs.
LOSS_FIELDS = ("iter", "loss", "train_loss", "val_loss", "lr")


# ---- running the entry points ----


def process_env(**extra: str) -> dict[str, str]:
    """The environment of a process a test starts: offline, one thread, and this checkout's nanogpt first on the
    path (submitit's jobs unpickle functions from it)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, **OFFLINE_ENV, "PYTHONPATH": path, **extra}


def run_command(
    cmd: list[str], cwd: Path, check: bool = True, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `cmd` in `cwd` (text output captured); with `check`, fail showing its output unless it exits 0."""
    proc = subprocess.run(cmd, cwd=cwd, env=env or process_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}")
    return proc


def run_entry(
    script: str, *args: str, cwd: Path, check: bool = True, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `python <repo>/<script> args...` in `cwd`; `env` adds to the offline environment."""
    return run_command([sys.executable, str(REPO / script), *args], cwd, check, timeout, process_env(**(env or {})))


def popen_command(cmd: list[str], cwd: Path, env: dict | None = None, **kw: Any) -> subprocess.Popen:
    """Start `cmd` in `cwd` in the background, its output piped as text unless `kw` says otherwise."""
    kw = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **kw}
    return subprocess.Popen(cmd, cwd=cwd, env=env or process_env(), **kw)


def popen_entry(script: str, *args: str, cwd: Path, env: dict | None = None, **kw: Any) -> subprocess.Popen:
    """Start `python <repo>/<script> args...` in the background (see popen_command)."""
    return popen_command([sys.executable, str(REPO / script), *args], cwd, env, **kw)


def train(tmp: Path, data: Path, *overrides: str, name: str = "default") -> Path:
    """A TINY run.py run in `tmp` on the data under `data`; returns its run dir."""
    tmp.mkdir(parents=True, exist_ok=True)
    run_entry("run.py", *TINY, f"paths.data_dir={data}", *overrides, cwd=tmp)
    return run_dirs(tmp, name)[-1]


def write_harness_tasks(folder: Path, docs: list[dict], bodies: dict[str, str], name: str = "docs") -> dict[str, Path]:
    """lm-evaluation-harness task YAMLs over `docs` written as a local JSON file (the harness reads no hub data):
    each task's `body` (output_type, doc_to_*, metrics) under the shared dataset lines; returns name -> path."""
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    head = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: {data}\nvalidation_split: validation\n"
    paths = {}
    for task, body in bodies.items():
        paths[task] = folder / f"{task}.yaml"
        paths[task].write_text(f"task: {task}\n{head}{body}metadata:\n  version: 1.0\n")
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_cmd(*args: str, port: int, nproc: int = 2, node: int | None = None) -> list[str]:
    """`torchrun run.py args...` with `nproc` processes; with `node` (0 or 1), one of two torchrun agents on
    localhost that meet at `port`."""
    nodes = [] if node is None else ["--nnodes=2", f"--node-rank={node}", "--master-addr=127.0.0.1"]
    launcher = [sys.executable, "-m", "torch.distributed.run", *nodes, f"--nproc-per-node={nproc}"]
    return [*launcher, f"--master-port={port}", str(REPO / "run.py"), *args]


def torchrun(cwd: Path, *args: str) -> Path | None:
    """`torchrun run.py args...` on two processes in `cwd`; the newest run dir under it (None when it has none)."""
    cwd.mkdir(parents=True, exist_ok=True)
    run_command(torchrun_cmd(*args, port=free_port()), cwd)
    return run_dirs(cwd)[-1] if (cwd / "outputs").exists() else None


def hf_env(tmp: Path) -> dict[str, str]:
    """`datasets` caches what it loads: keep that cache inside the test's temp dir."""
    return {"HF_DATASETS_CACHE": str(tmp / "hf-cache")}


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The process failed with exactly one `error: ...` line on stderr, no traceback, naming `needles`."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def wait_for(
    what: str, ready: Callable[[], Any], timeout: float = 300, proc: subprocess.Popen | None = None, poll: float = 0.2
) -> Any:
    """Poll `ready()` until it returns something truthy; fail with `what` after `timeout` s or if `proc` ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process exited {proc.returncode} before {what}\n{out[-3000:]}\n{err[-5000:]}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---- what a run wrote ----


def run_dirs(base: Path, name: str = "default") -> list[Path]:
    """The run dirs of experiment `name` under `base`/outputs, oldest first (not the `latest` link)."""
    return sorted(p for p in (base / "outputs" / name).iterdir() if not p.is_symlink())


def the_sweep(base: Path) -> Path:
    """The one sweep dir under `base`/multirun/<date>/<time>."""
    [sweep] = [p for p in (base / "multirun").glob("*/*") if p.is_dir()]
    return sweep


def metrics(run_dir: Path) -> list[dict]:
    """Every record of the run's metrics.jsonl ([] before it has one); every line must be whole."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def losses(run_dir: Path, keep: tuple[str, ...] = LOSS_FIELDS) -> list[tuple]:
    """Every logged record's `keep` fields (by default the losses and lr, without the timing that differs)."""
    return [tuple(r.get(k) for k in keep) for r in metrics(run_dir)]


def weights(run_dir: Path, which: str = "latest") -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / which / "model.safetensors"))


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def resumed_at(job: Path) -> int:
    """The iteration a requeued job resumed from, as its log says."""
    found = re.findall(r"resumed from \S+ at iter (\d+)", (job / "run.log").read_text())
    assert found, f"{job} never resumed:\n{(job / 'run.log').read_text()[-3000:]}"
    return int(found[-1])


def job_training(base: Path, num: str, it: int) -> Path | None:
    """Job `num` of the sweep under `base` once it has logged a training step at or past `it` and not finished."""

    def trained_to(job: Path) -> bool:
        logged = any(r.get("loss") is not None and r["iter"] >= it for r in metrics(job))
        return logged and not (job / "status.json").exists()

    return next((job for job in base.glob(f"multirun/*/*/{num}") if trained_to(job)), None)


def start_preemptible_sweep(base: Path, data: Path, *launcher: str, env: dict | None = None) -> subprocess.Popen:
    """A sweep in `base` of two identical LONG jobs (`name` changes nothing in training) through `launcher`:
    job 0 is to be preempted, job 1 is the reference."""
    args = ["-m", *launcher, *TINY, f"paths.data_dir={data}", *LONG, "name=preempted,reference"]
    return popen_entry("run.py", *args, cwd=base, env=env)


def job_0_training(base: Path, launcher: subprocess.Popen) -> Path:
    """Job 0 of start_preemptible_sweep's sweep, once it has logged step PREEMPT_AT."""
    return wait_for("job 0 to train", lambda: job_training(base, "0", PREEMPT_AT), proc=launcher)


# ---- comparing runs ----


def assert_close(a: list[tuple], b: list[tuple], tol: float = 1e-5) -> None:
    """Two runs' losses() agree: the same iters, the same fields logged, each value within `tol`."""
    assert len(a) == len(b), (a, b)
    for ra, rb in zip(a, b, strict=True):
        assert ra[0] == rb[0], (ra, rb)
        for x, y in zip(ra[1:], rb[1:], strict=True):
            assert (x is None) == (y is None) and (x is None or abs(x - y) < tol), (ra, rb)


def assert_same_weights(a: dict, b: dict, tol: float = 0.0) -> None:
    """The same tensors by name: bit for bit, or (with `tol`) within `tol` everywhere."""
    assert a.keys() == b.keys()
    if tol:
        assert all((a[k] - b[k]).abs().max() < tol for k in a)
    else:
        assert all(a[k].equal(b[k]) for k in a)


def assert_runs_agree(a: Path, b: Path, tol: float = 1e-5) -> None:
    """Two runs logged the same losses and saved the same weights, within `tol`."""
    assert_close(losses(a), losses(b), tol)
    assert_same_weights(weights(a), weights(b), tol)


def assert_complete_job(job: Path) -> None:
    assert (job / ".hydra" / "config.yaml").exists() and (job / ".hydra" / "overrides.yaml").exists()
    assert (job / "checkpoints" / "latest" / "model.safetensors").exists()
    assert metrics(job), f"{job} has no metrics"
    assert status(job)["status"] == "completed", status(job)


def assert_preempted_job_ended_as_the_reference(sweep: Path) -> None:
    """Both jobs of start_preemptible_sweep's sweep completed, job 0 resumed from the checkpoint saved on the
    signal (not from scratch), and it ended with the reference's weights, bit for bit."""
    for job in ("0", "1"):
        assert_complete_job(sweep / job)
    assert PREEMPT_AT <= resumed_at(sweep / "0") < LONG_ITERS
    assert_same_weights(weights(sweep / "0"), weights(sweep / "1"))


def assert_resume_is_exact(tmp_path: Path, data: Path, stop: int, total: int, *common: str) -> Path:
    """Train `total` steps straight, and `stop` steps then resumed to `total`: same losses and weights, bit for
    bit. Returns the resumed run's dir."""
    straight = train(tmp_path / "a", data, f"train.max_iters={total}", *common)
    first = train(tmp_path / "b", data, f"train.max_iters={stop}", *common)
    run_entry("run.py", f"resume={first}", f"train.max_iters={total}", cwd=tmp_path / "b")
    assert losses(straight) == losses(first)
    assert_same_weights(weights(straight), weights(first))
    return first


# ---- configs and models in process ----


def compose(*overrides: str):
    """run.py's RunConfig for `overrides`, composed with Hydra's compose API from conf/ (validated)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from nanogpt.cli.compose import register_configs, to_object
    from nanogpt.config import RunConfig

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return to_object(hydra_compose("train", overrides=list(overrides)), RunConfig)


# tiny_gpt()'s shape: small, but with several heads and layers, and a vocabulary that is not a power of two.
TINY_GPT = ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=48, vocab_size=101, dropout=0.0, bias=True)

# The modern model options (issue 6), each alone and all together, as tiny_gpt() keywords.
MODEL_OPTIONS = {
    "rotary": dict(rotary=True),
    "qk_norm": dict(qk_norm=True),
    "relu2": dict(activation="relu2"),
    "untied": dict(tie_embeddings=False),
    "zero_init": dict(tie_embeddings=False, zero_init_proj=True, zero_init_head=True),
    "all": dict(
        rotary=True, qk_norm=True, activation="relu2", tie_embeddings=False, zero_init_proj=True, zero_init_head=True
    ),
}


def tiny_gpt(**options: Any):
    """A TINY_GPT with `options`, seeded; weights that an option initialises to zero are perturbed so that they
    decide something."""
    import torch

    from nanogpt.model import GPT

    torch.manual_seed(0)
    model = GPT(dataclasses.replace(TINY_GPT, **options)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and not p.any():
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model


# ---- serve.py: tiny runs to serve, a server subprocess ----

CHARS = sorted(set(string.ascii_letters + string.digits + " .,:;!?'\n"))
KEY = "test-key"  # the API key the test servers are started with


def save_run(run_dir: Path, tokenizer_meta: dict, vocab: int, seed: int = 0, **shape) -> Path:
    """A run dir holding one checkpoint of a tiny random GPT whose logits are well separated."""
    import torch

    from nanogpt import checkpoint
    from nanogpt.model import GPT

    torch.manual_seed(seed)
    cfg = ModelConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=vocab, dropout=0.0, tie_embeddings=False
    )
    cfg = dataclasses.replace(cfg, **shape)
    model = GPT(cfg)
    with torch.no_grad():
        # Untied: a random tied model repeats its input token. Scaled up: the likeliest token has ~half the mass.
        model.lm_head.weight.mul_(20)
    info = {"iter": 0, "model": dataclasses.asdict(cfg), "data_vocab_size": vocab, "tokenizer": tokenizer_meta}
    checkpoint.save(str(run_dir), model, {}, info, as_best=True)
    return run_dir


@dataclasses.dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def client(self, key: str | None = KEY) -> Any:
        """The official `openai` client, pointed at this server."""
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "none", max_retries=0, timeout=30)


def start_server(tmp: Path, *args: str, key: str | None = KEY, env: dict | None = None) -> Server:
    """`python serve.py port=<free port> args...` in the background, once it answers /health; `env` adds to the
    offline environment."""
    import httpx

    port = free_port()
    log = tmp / f"serve-{port}.log"
    with open(log, "w") as out:
        proc = popen_entry("serve.py", f"port={port}", *args, *([f"api_key={key}"] if key else []), cwd=tmp,
                           stdout=out, env=process_env(**(env or {})), stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve.py exited {proc.returncode}:\n{log.read_text()}")
        try:
            httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {key}"}, timeout=1)
            return Server(proc, url, log)
        except httpx.TransportError:
            time.sleep(0.1)
    stop_server(Server(proc, url, log))
    raise AssertionError(f"serve.py did not answer within 60 s:\n{log.read_text()}")


def stop_server(server: Server) -> int:
    """SIGTERM, as a service manager would (killed if it does not exit in 20 s); returns its exit status."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    return server.proc.returncode


def greedy_near_ties(model: Any, prompt: list[int], served: list[int], vocab_limit: int, tol: float = 1e-4) -> int:
    """Check that `served`, a greedy continuation of `prompt` from a server that batched it with others, is what
    `model` decodes alone (prefill, then one cached token per forward, as `GPT.generate_stream`), and return the
    number of near-ties: tokens that differ from the solo argmax, allowed only where the solo logit of the served
    token is within `tol` of the top one (batched matmuls round differently). The solo decode follows the served
    tokens, so one near-tie does not make the rest of the reply incomparable. Fails at any other difference."""
    import torch

    from nanogpt.kernels import compute_dtype
    from nanogpt.model import LAST_POSITION, KVCache

    device = next(model.parameters()).device
    cache = KVCache(model.config, 1, device, compute_dtype(model))
    ties = 0
    with torch.inference_mode():
        logits, _ = model(torch.tensor([prompt], device=device), cache=cache, logits_at=LAST_POSITION)
        for i, token in enumerate(served):
            row = logits[0, -1, :vocab_limit].float()
            best = int(row.argmax())
            if token != best:
                gap = float(row[best] - row[token])
                assert gap <= tol, f"token {i} of {served}: served {token}, alone {best}, logits {gap:.2e} apart"
                ties += 1
            logits, _ = model(torch.tensor([[token]], device=device), cache=cache, logits_at=LAST_POSITION)
    return ties


def rss_kib(pid: int) -> int:
    """A process's resident memory (VmRSS in /proc/<pid>/status), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")
