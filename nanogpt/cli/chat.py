"""chat.py's main: a terminal conversation with a chat run."""

from __future__ import annotations

from omegaconf import DictConfig

from nanogpt.cli.compose import to_object
from nanogpt.cli.startup import importing_torch
from nanogpt.config import ChatConfig
from nanogpt.errors import exit_on_user_error


@exit_on_user_error
def chat_main(cfg: DictConfig) -> None:
    c: ChatConfig = to_object(cfg, ChatConfig)
    with importing_torch():
        from nanogpt.chat.repl import chat

    chat(c)
