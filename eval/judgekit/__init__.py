"""judgekit: the importable core behind the eval/ command-line scripts.

One concern per module; the commands in judgekit.commands (the scripts in eval/ only call them)
parse flags and call these:

- ``records``: read questions, answers and review rows; resume index (JSONL writing: qlorakit.jsonl).
- ``prompts``: load prompt and reviewer files (the packaged ones in prompt_files/ by default),
  pick by category, render (pure).
- ``verdicts``: the registry of verdict kinds: each kind's prompt file, reply parser, outcome
  rule and file-name tail (pure); adding a kind is one entry there.
- ``naming``: model names from review file names.
- ``reviews``: review rows -> judgments with both model names resolved.
- ``client``: the only module that imports ``openai``: concurrency, retries, resume-aware runs.
- ``elo``, ``bradley_terry``, ``relative``: scoring (pure, seeded).
- ``stub``: a loopback OpenAI-compatible server for tests, benchmarks and dry runs.
- ``cli``: the small glue every command shares (one-line errors, logging).
- ``commands``: one module per command (``qlora-judge``, ``qlora-elo``, ...); the scripts in
  eval/ call them from a checkout.

Nothing here imports torch: JSONL files, Guanaco turn markers and error reporting come from
qlorakit's torch-free modules (``jsonl``, ``chat_format``, ``errors``).
"""

from .errors import InputError

__all__ = ["InputError"]
