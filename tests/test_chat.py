"""qlora-chat (examples/chat.py): the multi-turn prompt, streaming up to the next turn, and piped chats that end cleanly."""

import json
import os
import subprocess
import sys

from types import SimpleNamespace

import pytest

from conftest import REPO_ROOT
from qlorakit.chat_data import GUANACO_TEMPLATE, encode_conversation, encode_text, resolve_chat_template

from qlorakit.cli import chat
from qlorakit.generation import template_stop_strings

GUANACO_MARKERS = ["### Human:", "### Assistant:"]

CHAT = os.path.join(REPO_ROOT, "examples", "chat.py")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from qlorakit.tokenizer import load_tokenizer
    return load_tokenizer(tiny_model_dir)


class TestBuildChatPrompt:
    def test_first_turn(self, tokenizer):
        assert chat.build_chat_prompt(tokenizer, GUANACO_TEMPLATE, [], "Hi") == "### Human: Hi### Assistant:"

    def test_second_prompt_carries_the_first_turn_as_training_rendered_it(self, tokenizer):
        history, message = [("Name a fruit.", "A pear.")], "What colour is it?"
        prompt = chat.build_chat_prompt(tokenizer, GUANACO_TEMPLATE, history, message)
        assert prompt == "### Human: Name a fruit.### Assistant: A pear.</s>### Human: What colour is it?### Assistant:"
        trained, _ = encode_conversation(tokenizer, GUANACO_TEMPLATE,
                                         chat.to_messages(history, message) + [{"role": "assistant", "content": "Red."}])
        assert trained[:len(encode_text(tokenizer, prompt))] == encode_text(tokenizer, prompt)


class TestFitHistory:
    def test_keeps_everything_that_fits(self):
        history = [("a", "b"), ("c", "d")]
        assert chat.fit_history(history, "e", prompt_length=len, budget=5) == history

    def test_drops_the_oldest_turns_first(self):
        assert chat.fit_history([("a", "b"), ("c", "d")], "e", prompt_length=len, budget=4) == [("c", "d")]

    def test_the_new_message_stays_even_alone_over_budget(self):
        assert chat.fit_history([("a", "b")], "e", prompt_length=len, budget=0) == []


class TestStreamReply:
    def stream(self, pieces):
        written = []
        reply = chat.stream_reply(iter(pieces), written.append, GUANACO_MARKERS)
        return reply, "".join(written)

    def test_stops_showing_at_a_marker_split_over_pieces(self):
        reply, shown = self.stream([" Rain is", " water.#", "## Hu", "man: and snow?"])
        assert reply == shown == "Rain is water."

    def test_a_held_back_hash_that_is_no_marker_is_shown_at_the_end(self):
        reply, shown = self.stream([" Use", " #"])
        assert reply == shown == "Use #"

    def test_assistant_marker_also_ends_the_reply(self):
        reply, shown = self.stream(["Yes.", "### Assistant: more"])
        assert reply == shown == "Yes."

    def test_pieces_are_written_as_they_arrive(self):
        written = []
        pieces = iter(["One", " two", " three"])
        chat.stream_reply(pieces, written.append, GUANACO_MARKERS)
        assert written[:2] == ["One", " two"]


def run_chat(tiny_model_dir, adapter_dir, stdin_text, *flags):
    command = [sys.executable, CHAT, "--model_name_or_path", tiny_model_dir, "--adapter", adapter_dir,
               "--max_new_tokens", "8", "--temperature", "0", "--show_prompt", *flags]
    result = subprocess.run(command, input=stdin_text, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    prompts = [json.loads(line[len("prompt: "):]) for line in result.stderr.splitlines() if line.startswith("prompt: ")]
    return result, prompts


def test_piped_questions_get_streamed_replies_and_eof_ends_the_chat(tiny_model_dir, random_adapter_dir):
    from qlorakit.tokenizer import load_tokenizer

    result, prompts = run_chat(tiny_model_dir, random_adapter_dir, "What is rain?\nAnd snow?\n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(prompts) == 2
    first_reply = prompts[1][len("### Human: What is rain?### Assistant: "):].split("### Human:")[0]
    assert first_reply, "the tiny model should say something in 8 tokens"
    template, _ = resolve_chat_template(None, load_tokenizer(tiny_model_dir))  # the tokenizer's own
    assert prompts[1] == chat.build_chat_prompt(load_tokenizer(tiny_model_dir), template,
                                                [("What is rain?", first_reply)], "And snow?")
    assert result.stdout.startswith(first_reply + "\n")
    second_reply = result.stdout[len(first_reply) + 1:]
    assert second_reply.endswith("\n") and second_reply.strip()
    assert "### Human:" not in result.stdout  # no prompt marker when stdin is not a terminal


def test_exit_ends_the_chat_before_later_lines(tiny_model_dir, random_adapter_dir):
    result, prompts = run_chat(tiny_model_dir, random_adapter_dir, "What is rain?\nexit\nAnd snow?\n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert prompts == ["### Human: What is rain?### Assistant:"]


def test_guanaco_template_prompts_carry_eos_after_each_reply(tiny_model_dir, random_adapter_dir):
    result, prompts = run_chat(tiny_model_dir, random_adapter_dir, "What is rain?\nAnd snow?\n", "--chat_template", "guanaco")
    assert result.returncode == 0, result.stderr[-3000:]
    assert prompts[0] == "### Human: What is rain?### Assistant:"
    assert prompts[1].startswith(prompts[0]) and prompts[1].endswith("</s>### Human: And snow?### Assistant:")


def test_a_missing_template_file_is_refused_before_loading(tiny_model_dir, random_adapter_dir):
    result, _ = run_chat(tiny_model_dir, random_adapter_dir, "", "--chat_template", "missing.jinja")
    assert result.returncode == 2 and "missing.jinja" in result.stderr.strip().splitlines()[-1]


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHATML_MARKERS = ["<|im_end|>\n<|im_start|>user", "<|im_end|>\n<|im_start|>assistant"]


class RecordingModel:
    """Stands in for the model: records the stop strings generate is given and streams nothing."""

    def __init__(self):
        import torch

        self.config = SimpleNamespace(max_position_embeddings=512)
        self.device = torch.device("cpu")
        self.stop_strings = []

    def generate(self, streamer=None, generation_config=None, **kwargs):
        self.stop_strings.append(generation_config.stop_strings)
        streamer.end()


class TestStopsAtTheActiveTemplatesTurn:
    def test_the_markers_are_what_open_the_next_user_turn_and_a_reply(self, tokenizer):
        assert template_stop_strings(tokenizer, GUANACO_TEMPLATE) == GUANACO_MARKERS
        assert template_stop_strings(tokenizer, CHATML) == CHATML_MARKERS

    @pytest.mark.parametrize("template, markers", [(GUANACO_TEMPLATE, GUANACO_MARKERS), (CHATML, CHATML_MARKERS)])
    def test_generation_stops_there_and_not_at_another_templates_marker(self, tokenizer, monkeypatch, template,
                                                                        markers):
        import io

        monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n"))
        model = RecordingModel()
        args = chat.parse_args(["--model_name_or_path", "m", "--max_new_tokens", "4", "--temperature", "0"])
        chat.chat(model, tokenizer, template, args)
        assert model.stop_strings == [markers]
