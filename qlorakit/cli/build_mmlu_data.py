"""Build the MMLU prompt files that `qlora.py --do_mmlu_eval --mmlu_data_dir DIR` reads.

    python scripts/build_mmlu_data.py --output_dir data/mmlu

Needs the hub once (dataset cais/mmlu); the project cannot ship MMLU itself. Writes, as JSON
lines with fields input, output, subject (the reference's layout):
zero_shot_mmlu_{val,test}.json and five_shot_mmlu_{val,test}.json, the five shots taken from the
dev split of the same subject. The header line is the standard MMLU evaluation prompt (Hendrycks
et al., 2021), kept verbatim so that scores compare with published ones.
"""

import argparse
import os

from datasets import load_dataset

from qlorakit.errors import InputError, run_main
from qlorakit.jsonl import write_jsonl_atomic
from qlorakit.mmlu import CHOICES

SPLITS = {"val": "validation", "test": "test"}


def subject_header(subject):
    # The leading-space join reproduces the published prompt files byte for byte ("about  x y").
    words = "".join(" " + word for word in subject.split("_"))
    return f"The following are multiple choice questions (with answers) about {words}.\n\n"


def format_question(row, with_answer):
    """'question / A. .. / B. .. / C. .. / D. .. / Answer:' plus ' X' and a blank line for shots."""
    lines = [row["question"]] + [f"{letter}. {choice}" for letter, choice in zip(CHOICES, row["choices"])]
    text = "\n".join(lines) + "\nAnswer:"
    return f"{text} {CHOICES[row['answer']]}\n\n" if with_answer else text


def build_rows(split_rows, shots_by_subject, num_shots):
    rows = []
    for row in split_rows:
        shots = shots_by_subject.get(row["subject"], [])[:num_shots]
        prompt = subject_header(row["subject"]) + "".join(format_question(s, True) for s in shots)
        rows.append({"input": prompt + format_question(row, False), "output": CHOICES[row["answer"]],
                     "subject": row["subject"]})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="data/mmlu")
    parser.add_argument("--dataset", default="cais/mmlu", help="hub id of MMLU with question/choices/answer")
    args = parser.parse_args(argv)
    try:
        mmlu = load_dataset(args.dataset, "all")
    except (ConnectionError, OSError) as error:
        raise InputError(f"could not load {args.dataset} from the hub ({type(error).__name__})") from error
    shots_by_subject = {}
    for row in mmlu["dev"]:
        shots_by_subject.setdefault(row["subject"], []).append(row)
    for short_name, split in SPLITS.items():
        for prefix, num_shots in (("zero_shot", 0), ("five_shot", 5)):
            rows = build_rows(mmlu[split], shots_by_subject, num_shots)
            path = os.path.join(args.output_dir, f"{prefix}_mmlu_{short_name}.json")
            write_jsonl_atomic(path, rows)
            print(f"{path}: {len(rows)} questions")


def console_main():
    """The ``qlora-build-mmlu-data`` command."""
    return run_main(main)
