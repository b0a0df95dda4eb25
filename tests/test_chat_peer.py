"""benchmarks/chat_peer.py: TRL is given the Guanaco template with generation markers, and the masks
transformers derives from those markers equal ours on every bundled conversation."""

import json
import os

import chat_peer

from qlorakit import SAMPLE_DATA_DIR
from qlorakit.chat_data import GUANACO_TEMPLATE, encode_conversation, normalize_conversation
from qlorakit.tokenizer import load_tokenizer


def test_generation_marker_masks_equal_ours_on_the_chat_sample(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    with open(os.path.join(SAMPLE_DATA_DIR, "chat_sample.jsonl"), encoding="utf-8") as handle:
        conversations = [normalize_conversation(json.loads(line)) for line in handle]
    for messages in conversations:
        marked = tokenizer.apply_chat_template(messages, chat_template=chat_peer.GUANACO_TEMPLATE_WITH_MARKERS,
                                               tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = encode_conversation(tokenizer, GUANACO_TEMPLATE, messages)
        assert list(marked["input_ids"]) == ids
        assert list(marked["assistant_masks"]) == mask
