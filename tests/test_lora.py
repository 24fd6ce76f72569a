"""LoRA (`finetune=lora`): only the adapters train, checkpoints hold only them and a sha256-checked pointer to the
base, resume is exact, sample.py and export.py load base + adapter (the export merged: the same logits), and peft's
LoRA on our GPT computes what it computes on the exported Hugging Face GPT-2 with the same adapter weights."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from helpers import (
    assert_resume_is_exact,
    losses,
    one_line_error,
    run_entry,
    tiny_gpt,
    train,
    weights,
)
from safetensors.torch import load_file, save_file

from nanogpt import lora
from nanogpt.config import FinetuneConfig

LORA = ["finetune=lora", "finetune.rank=4", "optim.lr=1e-2", "train.eval_interval=2"]


@pytest.fixture(scope="module")
def source(tmp_path_factory, char_data):
    """A finished tiny run to finetune."""
    tmp = tmp_path_factory.mktemp("source")
    return train(tmp, char_data, "train.max_iters=4", "train.eval_interval=2", "name=src", name="src")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, char_data, source):
    """A LoRA finetune of `source`."""
    tmp = tmp_path_factory.mktemp("tuned")
    return train(tmp, char_data, f"init_from={source}", *LORA, "train.max_iters=4", "name=ft", name="ft")


def test_only_the_adapters_train_and_the_checkpoint_holds_only_them(tuned, source):
    ckpt = tuned / "checkpoints" / "latest"
    saved = load_file(ckpt / "model.safetensors")
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in saved} == {"c_attn", "c_proj", "c_fc"}
    assert all(v.shape[0] == 4 for k, v in saved.items() if ".lora_A." in k)  # rank 4
    assert any(v.abs().max() > 0 for k, v in saved.items() if ".lora_B." in k)  # B starts at zero: it trained
    info = json.loads((ckpt / "info.json").read_text())
    base = (source / "checkpoints" / "best").resolve()
    pointer = info["finetune"]["base"]
    assert pointer["checkpoint"] == str(base)
    assert pointer["sha256"] == hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()
    # The optimizer holds moments for the adapters alone.
    state = torch.load(ckpt / "trainer.pt", weights_only=True)["optimizers"][0]["state"]
    assert sum(s["exp_avg"].numel() for s in state.values()) == sum(v.numel() for v in saved.values())
    # The frozen base is untouched: the merged model minus the adapters' products is the source's weights.
    merged = lora.load_adapted(info, str(ckpt))
    src = weights(source, "best")
    for name, p in merged.named_parameters():
        if ".base_layer." in name:
            assert torch.equal(p, src[name.replace(".base_layer", "")]), name


@pytest.mark.slow
def test_lora_resume_is_exact(tmp_path, char_data, source):
    # The decay's length fixed: the first half's last evaluation logs the lr of the schedule it ran under.
    common = (f"init_from={source}", *LORA, "finetune.dropout=0.1", "optim.lr_decay_iters=4")
    run = assert_resume_is_exact(tmp_path, char_data, 2, 4, *common)
    assert len(losses(run)) == 7


def test_export_merges_the_adapters_into_the_same_logits(tmp_path, tuned):
    from transformers import GPT2LMHeadModel

    out = tmp_path / "hf"
    run_entry("export.py", f"run={tuned}", f"out={out}", cwd=tmp_path)
    ckpt = (tuned / "checkpoints" / "best").resolve()
    adapted = lora.load_adapted(json.loads((ckpt / "info.json").read_text()), str(ckpt)).eval()
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    x = torch.randint(0, hf.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = adapted(x)[0][..., : hf.config.vocab_size]
        theirs = hf(x).logits
    assert (ours - theirs).abs().max() < 1e-5


def test_sample_loads_base_and_adapter(tmp_path, tuned):
    args = ["start=ROMEO:", "num_samples=1", "max_new_tokens=20", "device.device=cpu"]
    proc = run_entry("sample.py", f"run={tuned}", *args, cwd=tmp_path)
    assert proc.stdout.startswith("ROMEO:") and "---------------" in proc.stdout


def test_an_adapter_whose_base_changed_is_refused_in_one_line(tmp_path, char_data, source):
    base = tmp_path / "base"
    shutil.copytree(source, base, symlinks=True)
    ft = train(tmp_path / "ft", char_data, f"init_from={base}", *LORA, "train.max_iters=2", "name=ft", name="ft")
    path = (base / "checkpoints" / "best").resolve() / "model.safetensors"
    changed = {k: v + 1e-3 for k, v in load_file(path).items()}
    save_file(changed, path)
    proc = run_entry("sample.py", f"run={ft}", "num_samples=1", "max_new_tokens=2", cwd=tmp_path, check=False)
    one_line_error(proc, "was trained over", "restore the base")


def test_a_target_the_model_lacks_is_refused_in_one_line(tmp_path, char_data, source):
    proc = run_entry(
        "run.py", "model=tiny", "device=cpu", f"paths.data_dir={char_data}", f"init_from={source}", "finetune=lora",
        "finetune.targets=[c_attn,q_proj]", "train.max_iters=1", cwd=tmp_path, check=False,
    )  # fmt: skip
    one_line_error(proc, "'q_proj'", "c_attn, c_fc, c_proj, lm_head")


def test_lora_from_scratch_is_refused_in_one_line(tmp_path, char_data):
    proc = run_entry("run.py", "model=tiny", "device=cpu", f"paths.data_dir={char_data}", "finetune=lora",
                     cwd=tmp_path, check=False)  # fmt: skip
    one_line_error(proc, "finetune=lora", "init_from=")


def test_peft_on_our_gpt_and_on_the_exported_hf_gpt2_agree(tmp_path):
    """The same adapter weights in both: Hugging Face's GPT-2 stores its linear layers as Conv1D, (in, out), which
    peft adapts with fan_in_fan_out; its lora_A/lora_B keep the (rank, in) / (out, rank) shapes of ours."""
    from peft import inject_adapter_in_model
    from transformers import GPT2LMHeadModel

    from nanogpt.pretrained import to_huggingface

    model = tiny_gpt()
    to_huggingface(model, model.config.vocab_size, str(tmp_path / "hf"), {"kind": "char", "chars": None})
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    settings = FinetuneConfig("lora", rank=4, alpha=8.0, targets=["c_attn", "c_proj", "c_fc"])
    ours = lora.attach(model, settings).eval()
    hf = inject_adapter_in_model(lora.peft_config(settings, fan_in_fan_out=True), hf)
    with torch.no_grad():
        adapters = {k: torch.randn_like(v) * 0.1 for k, v in lora.adapter_weights(ours).items()}
        ours.load_state_dict(adapters, strict=False)
        theirs = {f"transformer.{k.removeprefix('transformer.')}": v for k, v in adapters.items()}
        result = hf.load_state_dict(theirs, strict=False)
        assert not result.unexpected_keys
        x = torch.randint(0, 101, (2, 16), generator=torch.Generator().manual_seed(1))
        a, b = ours(x)[0], hf(x).logits
        assert (ours(x)[0] - tiny_gpt()(x)[0]).abs().max() > 1e-3  # the adapters change the function
    assert (a - b).abs().max() < 1e-5
