"""The prompt template a run was trained with, saved beside its adapter and used by inference.

An adapter answers best when prompted in the layout it learned. qlora.py writes
``prompt_template.json`` (the template's name and its Jinja text) into every ``adapter_model/``:
the text always, so that a later change to a named template or to the base tokenizer's own does
not change what a trained run is prompted with. qlora-chat, qlora-guanaco-generate and
qlora-generate render with it unless their template flag names another; adapters without the
file are prompted as before. Light on purpose (no torch import).
"""

import os
import sys

from .jsonl import read_json_object, write_json_atomic

TEMPLATE_FILE = "prompt_template.json"


def template_record(name, template):
    """What prompt_template.json holds: the name given at training (guanaco, tokenizer, a .jinja
    path) and the Jinja text it stood for then."""
    return {"name": name, "template": template}


def write_template_record(adapter_dir, record):
    write_json_atomic(os.path.join(adapter_dir, TEMPLATE_FILE), record)


def read_template_record(adapter_dir):
    """The saved record of a local adapter directory, or None (a hub id, or saved without one)."""
    path = os.path.join(os.path.expanduser(adapter_dir), TEMPLATE_FILE) if adapter_dir else ""
    if not os.path.isfile(path):
        return None
    return read_json_object(path)


def inference_template(choice, tokenizer, adapter, flag, default=None, tools=None):
    """(name, Jinja text) to prompt with: the flag's template if given, else the one the adapter
    was trained with, else `default` (None: the tokenizer's own if it has one, else guanaco).
    The choice is said in one line on stderr whenever the adapter has a saved template or the name picks
    one of the tokenizer's named templates. `tools` (of --tools) are refused by a template without a
    tool layout."""
    from .chat_data import refuse_without_tool_layout

    name, template = chosen_template(choice, tokenizer, adapter, flag, default, uses_tools=bool(tools))
    if tools:
        refuse_without_tool_layout(tokenizer, template, "--tools", flag)
    return name, template


def chosen_template(choice, tokenizer, adapter, flag, default, uses_tools):
    from .chat_data import TOKENIZER_NAMED, resolve_chat_template, template_name

    saved = read_template_record(adapter)
    where = os.path.join(adapter, TEMPLATE_FILE) if saved else None
    if choice is None and saved:
        print(f"prompt template: {saved['name']} (as trained, from {where})", file=sys.stderr)
        return saved["name"], saved["template"]
    name = template_name(choice or default, tokenizer, uses_tools)
    template, description = resolve_chat_template(name, tokenizer)
    if saved:
        same = "the same as" if template == saved["template"] else "differs from"
        print(f"prompt template: {name} ({flag}; {same} the {saved['name']} template it was trained with, {where})",
              file=sys.stderr)
    elif name.startswith(TOKENIZER_NAMED):
        print(f"prompt template: {name} ({description})", file=sys.stderr)
    return name, template
