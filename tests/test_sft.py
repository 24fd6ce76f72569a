"""Supervised finetuning: `prepare.py data=chat` (conversations -> packed rows + loss masks), the loss on the
answers only (against a hand computation), the refusals of bad conversations, and the CPU demonstration that SFT
raises the exact-match accuracy of held-out answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import metrics, one_line_error, run_dirs, run_entry

from nanogpt.config import DataConfig
from nanogpt.data.batches import Batches
from nanogpt.data.chat import pack, prepare_chat
from nanogpt.model import GPT, ModelConfig

REVERSE = ["data=chat_reverse", "data.synthetic_examples=600", "data.pack_block_size=64"]


def test_best_fit_packing_keeps_conversations_whole_and_counts_what_it_cuts():
    convs = [([1] * n, [0] + [1] * (n - 1)) for n in (6, 5, 4, 3, 2)] + [([1] * 12, [0] + [1] * 11)]
    convs.append(([2] * 12, [0] * 11 + [1]))  # its answer is past the row: dropped
    tokens, mask, stats = pack(convs, row=8, pad=9)
    rows = tokens.reshape(-1, 8)
    # Longest first, each into the fullest row it fits: [8 (cut from 12)], [6, 2], [5, 3], [4] -> 4 rows.
    assert len(rows) == 4 and stats == {"conversations": 6, "truncated": 2, "dropped": 1, "padding": 0.125}
    assert (rows[3, 4:] == 9).all() and mask.reshape(-1, 8)[3, 4:].sum() == 0
    assert int(mask.sum()) == 7 + 5 + 4 + 3 + 2 + 1  # the cut conversation keeps 7 of its 11 answer tokens
    assert [int((r != 9).sum()) for r in rows] == [8, 8, 8, 4]


@pytest.fixture(scope="module")
def reverse_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    run_entry("prepare.py", *REVERSE, f"paths.data_dir={root}", cwd=root)
    return root / "chat_reverse"


def test_prepared_rows_masks_and_meta(reverse_data):
    meta = json.loads((reverse_data / "meta.json").read_text())
    row = meta["chat"]["row_tokens"]
    assert row == 65 and meta["chat"]["padding"]["train"] < 0.10
    for split in ("train", "val"):
        mask = np.fromfile(reverse_data / f"{split}_mask.bin", np.uint8)
        tokens = np.fromfile(reverse_data / f"{split}.bin", meta["dtype"])
        assert len(mask) == len(tokens) == meta[f"{split}_tokens"] and len(tokens) % row == 0
        assert int(mask.sum()) == meta["chat"]["answer_tokens"][split]
    assert sum(1 for _ in open(reverse_data / "heldout.jsonl")) == meta["chat"]["conversations"]["val"] == 60


def test_the_step_loss_is_the_mean_over_all_answer_tokens(reverse_data):
    """What run.py's step computes (Batches.weight times the model's mean per micro-batch, summed) equals the
    cross-entropy averaged by hand over every answer token of the step's micro-batches."""
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=300))
    batches = Batches(str(reverse_data), 64, batch_size=3, grad_accum=4, seed=5, device=torch.device("cpu"))
    tokens = np.fromfile(reverse_data / "train.bin", np.uint16).astype(np.int64)
    mask = np.fromfile(reverse_data / "train_mask.bin", np.uint8)
    ours, nll, count = 0.0, 0.0, 0
    for micro in range(4):
        x, y = batches.train(7, micro)
        _, loss = model(x, y)
        ours += float(loss) * batches.weight(7, micro) / 4
        for row in batches._starts[micro * 3 : (micro + 1) * 3]:  # by hand, from the files themselves
            ids, keep = tokens[row : row + 65], mask[row + 1 : row + 65] == 1
            logp = torch.log_softmax(model(torch.tensor(ids[None, :-1]))[0][0].double(), -1)
            picked = logp[torch.arange(64), torch.tensor(ids[1:])]
            nll -= float(picked[torch.tensor(keep)].sum())
            count += int(keep.sum())
    torch.set_grad_enabled(True)
    assert (y == -1).any() and count > 0
    assert ours == pytest.approx(nll / count, rel=1e-5)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize(
    "record,needles",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, ["conversation 1", "no assistant turn"]),
        ({"messages": [{"role": "bot", "content": "hi"}]}, ["conversation 1", "unknown role 'bot'"]),
        ({"messages": [{"role": "user", "content": " "}, GOOD["messages"][1]]}, ["message 0", "empty content"]),
        ({"text": "just a document"}, ["conversation 1", "no 'messages'"]),
    ],
)
def test_bad_conversations_are_one_line_and_nothing_is_written(tmp_path, record, needles):
    _write_jsonl(tmp_path / "chats.jsonl", [GOOD, record] + [GOOD] * 8)
    proc = run_entry(
        "prepare.py", "data=chat", "data.dataset=null", f"data.source={tmp_path / 'chats.jsonl'}", "data.name=mine",
        f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path, check=False,
    )  # fmt: skip
    one_line_error(proc, *needles)
    assert not (tmp_path / "data" / "mine" / "meta.json").exists()


def test_a_file_that_is_not_json_and_a_character_vocabulary_are_refused(tmp_path):
    (tmp_path / "chats.json").write_text("{not json")
    common = ["data=chat", "data.dataset=null", f"data.source={tmp_path / 'chats.json'}", f"paths.data_dir={tmp_path}"]
    one_line_error(run_entry("prepare.py", *common, cwd=tmp_path, check=False), "is not conversations in JSON")
    proc = run_entry("prepare.py", *common, "data.tokenizer=char", cwd=tmp_path, check=False)
    one_line_error(proc, "data.tokenizer=char has no chat tokens")


def test_alpaca_records_from_a_parquet_folder_through_datasets(tmp_path):
    """The hub path (data.dataset) on a local Parquet folder, as `datasets` reads a downloaded set."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "alpaca"
    folder.mkdir()
    rows = [{"instruction": f"Say {i}.", "input": "" if i % 2 else "politely", "output": f"{i}!"} for i in range(20)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000.parquet")
    data = DataConfig(name="alpaca", tokenizer="gpt2", format="alpaca", dataset=str(folder), pack_block_size=32)
    out = prepare_chat(data, str(tmp_path / "out"))
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["tokenizer"] == {"kind": "gpt2", "chat": True} and meta["source"] == f"datasets: {folder}"
    assert meta["chat"]["conversations"] == {"train": 18, "val": 2} and out == str(tmp_path / "out")
    tokens = np.fromfile(tmp_path / "out" / "train.bin", meta["dtype"]).tolist()
    assert 50258 in tokens and 50259 in tokens and 50260 in tokens  # <|user|>, <|assistant|>, <|end|>


@pytest.mark.slow
def test_sft_raises_the_exact_match_accuracy_of_held_out_answers(tmp_path, reverse_data):
    """The CPU demonstration, small: a barely trained base, SFT from it, chat_exact before and after."""
    data_dir = f"paths.data_dir={reverse_data.parent}"
    small = ["model.block_size=64", "train.eval_iters=2", "train.log_interval=50", *REVERSE, data_dir]
    run_entry("run.py", "experiment=chat_reverse_cpu", *small, "train.max_iters=5", "name=base", cwd=tmp_path)
    base = run_dirs(tmp_path, "base")[-1]
    run_entry("run.py", "experiment=chat_reverse_cpu", *small, f"init_from={base}", "name=sft", cwd=tmp_path)
    tuned = run_dirs(tmp_path, "sft")[-1]
    acc = {}
    for name, run in (("before", base), ("after", tuned)):
        run_entry("eval.py", f"run={run}", "tasks=[chat_exact]", "limit=40", data_dir, cwd=tmp_path)
        acc[name] = json.loads((run / "eval" / "best.json").read_text())["tasks"]["chat_exact"]["metrics"]["acc"]
    assert acc["before"] <= 0.05 and acc["after"] >= 0.5, acc
    assert metrics(tuned)[-1]["val_loss"] < 0.5
