"""chat.py as a user runs it, in a real terminal (a pty, through pexpect), and export.py's chat template: a tiny run
trained on conversations in GPT-2's chat vocabulary, which the test writes."""

from __future__ import annotations

import json
import sys

import pexpect
import pytest
from helpers import REPO, one_line_error, process_env, run_entry, train

from nanogpt.chat.template import ChatTemplate
from nanogpt.tokenizer import GPT2Tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "5"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": " 床前明月光，疑是地上霜 — naïve café? 👋🏽🇫🇷\n\n  tabs\tand more"},
        {"role": "assistant", "content": "Привет! مرحبا 😀\n"},
        {"role": "user", "content": "again"},
    ],
]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A tiny run trained on arithmetic conversations, tokenized with GPT-2's chat vocabulary."""
    import numpy as np

    from nanogpt.data.token_files import finish_dataset

    root = tmp_path_factory.mktemp("chat")
    template = ChatTemplate.of(GPT2Tokenizer(chat=True))
    ids = {"train": [], "val": []}
    for a in range(12):
        for b in range(12):
            talk = [{"role": "user", "content": f"What is {a}+{b}?"}, {"role": "assistant", "content": str(a + b)}]
            ids["val" if (a + b) % 7 == 0 else "train"] += template.encode(talk)[0]
    out = root / "data" / "chatdemo"
    out.mkdir(parents=True)
    for split, tokens in ids.items():
        np.asarray(tokens, dtype=np.uint16).tofile(out / f"{split}.bin")
    meta = {"tokenizer": {"kind": "gpt2", "chat": True}, "vocab_size": 50261, "source": "test", "dtype": "uint16"}
    finish_dataset(str(out), {**meta, **{f"{split}_tokens": len(tokens) for split, tokens in ids.items()}})
    return train(root, root / "data", "data=shakespeare", "data.name=chatdemo", "train.max_iters=2",
                 "train.eval_interval=2", "name=chat", name="chat")  # fmt: skip


def test_export_writes_the_chat_template_hugging_face_applies(tmp_path, chat_run):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    out = tmp_path / "hf"
    run_entry("export.py", f"run={chat_run}", f"out={out}", cwd=tmp_path)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|assistant|>" in config["chat_template"]
    hf = AutoTokenizer.from_pretrained(out)
    template = ChatTemplate.of(GPT2Tokenizer(chat=True))
    for messages in CONVERSATIONS:
        for generation_prompt in (False, True):
            theirs = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                            return_dict=False)  # fmt: skip
            assert list(theirs) == template.encode(messages, add_generation_prompt=generation_prompt)[0]
    assert hf.decode(template.prompt(CONVERSATIONS[1])) == template.render(CONVERSATIONS[1], True)
    begun = [*CONVERSATIONS[0][:1], {"role": "assistant", "content": "The answer:"}]  # eval.py chat=true's gen_prefix
    theirs = hf.apply_chat_template(begun, tokenize=True, continue_final_message=True, return_dict=False)
    assert list(theirs) == template.encode(begun, continue_final=True)[0]
    assert GPT2LMHeadModel.from_pretrained(out).config.vocab_size == 50261


def test_prompt_answers_once_and_exits(tmp_path, chat_run):
    proc = run_entry("chat.py", f"run={chat_run}", "prompt=What is 2+3?", "max_new_tokens=4", "device.device=cpu",
                     cwd=tmp_path)  # fmt: skip
    assert proc.stdout.endswith("\n") and "chatting with" not in proc.stdout


def test_a_base_model_is_refused_in_one_line(tmp_path, char_data):
    base = train(tmp_path, char_data, "train.max_iters=1", "train.eval_interval=1")
    proc = run_entry("chat.py", f"run={base}", cwd=tmp_path, check=False)
    one_line_error(proc, "no chat tokens")


@pytest.mark.slow
def test_the_repl_in_a_terminal(tmp_path, chat_run):
    """Typing turns in a pty and reading the streamed replies; the commands; history kept within the block."""
    args = [str(REPO / "chat.py"), f"run={chat_run}", "max_new_tokens=6", "temperature=0", "device.device=cpu"]
    child = pexpect.spawn(sys.executable, args, cwd=str(tmp_path), env=process_env(), encoding="utf-8", timeout=60)
    try:
        child.expect("Ctrl-C stops a reply")
        child.expect_exact("> ")
        child.sendline("What is 2+3?")
        child.expect_exact("> ")  # the reply was written, then the next prompt
        assert child.before.strip()
        child.sendline("/system Answer with a number.")
        child.expect_exact("(system message set)")
        for question in ("What is 4+4?", "What is 7+1?", "What is 3+3?"):
            child.expect_exact("> ")
            child.sendline(question)
        child.expect_exact("(dropped the oldest")  # a 32-token block holds about two exchanges
        child.expect_exact("> ")
        child.sendline(f"/save {tmp_path / 'talk.json'}")
        child.expect_exact("(saved")
        child.sendintr()  # Ctrl-C at the prompt does not end the program
        child.expect_exact("/quit leaves")
        child.sendline("/reset")
        child.expect_exact("(conversation reset)")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    saved = json.loads((tmp_path / "talk.json").read_text())["messages"]
    assert saved[0] == {"role": "system", "content": "Answer with a number."}
    assert [m["role"] for m in saved[1:]] == ["user", "assistant"] * ((len(saved) - 1) // 2)
    assert saved[-2]["content"] == "What is 3+3?"


def test_ctrl_c_stops_a_reply_and_keeps_what_was_written(chat_run, monkeypatch):
    import io

    from nanogpt.chat.repl import Conversation
    from nanogpt.config import ChatConfig

    conversation = Conversation(ChatConfig(run=str(chat_run), max_new_tokens=8), io.StringIO())
    model = conversation.model
    real = model.generate_stream

    def interrupted(*args, **kwargs):
        for i, token in enumerate(real(*args, **kwargs)):
            if i == 3:
                raise KeyboardInterrupt
            yield token

    monkeypatch.setattr(model, "generate_stream", interrupted)
    answer = conversation.reply("What is 1+1?")
    assert conversation.out.getvalue().endswith(" (stopped)\n")
    assert conversation.turns[-1] == {"role": "assistant", "content": answer or " "}
