"""Judge wall time for N reviews against the loopback stub at a fixed reply latency.

Assumes nothing but this repository (no network, no key: the stub runs in this process and the
judge CLI talks to it over 127.0.0.1). Launch from any directory:

    python eval/benchmarks/judge_latency.py --reviews 80 --latency 0.2 --concurrency 1 8

For each concurrency it writes 80 synthetic questions and two answer files, runs
eval/eval_gpt_review.py as a user would, with the packaged prompts (fresh output, so nothing is
resumed) and prints the wall time of the whole command, start-up included, as a Markdown table.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from judgekit.stub import StubServer

EVAL_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_inputs(directory, count):
    """Questions and two answer files of ``count`` rows; returns their paths."""
    paths = {name: os.path.join(directory, f"{name}.jsonl") for name in ("questions", "model_a", "model_b")}
    rows = {
        "questions": [{"question_id": i, "text": f"Synthetic question {i}?", "category": "generic"} for i in range(count)],
        "model_a": [{"answer_id": f"a{i}", "question_id": i, "text": f"First answer to {i}."} for i in range(count)],
        "model_b": [{"answer_id": f"b{i}", "question_id": i, "text": f"Second answer to {i}."} for i in range(count)],
    }
    for name, path in paths.items():
        with open(path, "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows[name])
    return paths


def time_one_run(paths, stub, concurrency, output):
    """Seconds for one eval_gpt_review.py run judging every question once."""
    command = [sys.executable, os.path.join(EVAL_DIR, "eval_gpt_review.py"), "-q", paths["questions"],
               "-a", paths["model_a"], paths["model_b"], "-o", output, "--concurrency", str(concurrency)]
    env = dict(os.environ, OPENAI_BASE_URL=stub.base_url, OPENAI_API_KEY="benchmark-key")
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", type=int, default=80)
    parser.add_argument("--latency", type=float, default=0.2, help="stub seconds per reply")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    print("| concurrency | reviews | stub latency | wall time | reviews/s |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        paths = write_inputs(directory, args.reviews)
        for concurrency in args.concurrency:
            with StubServer(latency=args.latency) as stub:
                output = os.path.join(directory, f"reviews-c{concurrency}.jsonl")
                seconds = time_one_run(paths, stub, concurrency, output)
                assert stub.billed_total == args.reviews, "every review asked exactly once"
            print(f"| {concurrency} | {args.reviews} | {args.latency:g} s | {seconds:.1f} s | "
                  f"{args.reviews / seconds:.1f} |")


if __name__ == "__main__":
    main()
