"""Should a target cut by --target_max_len end with eos? Train the tiny model both ways and measure.

    python benchmarks/cut_target_eos.py [--steps 400] [--seed 0] [--json]

Synthetic rows with a clear structure: a prompt asks for one thing, two things, or the whole story
about a subject, and the answer is that many sentences (one, two, six), each ending with a full
stop. --target_max_len is set so one- and two-sentence answers fit and every six-sentence answer
is cut (a third of the rows). The rows are tokenized by qlorakit.data.tokenize_rows, which keeps no
eos on a cut target; the other arm puts eos in the last kept place of each cut target instead.
A random tiny LLaMA is trained on each arm alike (same seed, same batches, loss on the target),
then prompted with subjects it never saw:

- greedy generations, each classed as stopped at a sentence end (eos after a full stop), stopped
  mid-sentence (eos after anything else), or ran to max_new_tokens (no eos);
- teacher-forced probability of eos at three kinds of place in held-out answers: the true end of
  an answer that fits, the place where a six-sentence answer is cut, and the sentence ends inside
  a six-sentence answer (a full stop that is not the answer's end).
"""

import argparse
import json
import random
import time

import torch

from qlorakit import SAMPLE_DATA_DIR
from qlorakit.cli.make_tiny_model import build_model, train_tokenizer
from qlorakit.data import tokenize_rows

SUBJECTS = ["the baker", "the farmer", "the sailor", "the teacher", "the miller", "the weaver", "the tailor",
            "the hunter", "the painter", "the doctor", "the smith", "the singer", "the gardener", "the pilot",
            "the potter", "the judge", "the fisher", "the driver", "the porter", "the dancer", "the writer",
            "the builder", "the cook", "the nurse", "the guard", "the monk", "the queen", "the king", "the clerk",
            "the miner", "the poet", "the scholar"]
HELD_OUT = 8  # the last subjects are never trained on
VERBS = ["keeps", "finds", "carries", "paints", "sells", "mends", "watches", "cleans", "buys", "hides"]
ADJECTIVES = ["old", "small", "green", "heavy", "bright", "quiet", "broken", "golden"]
OBJECTS = ["basket", "lamp", "boat", "coat", "bell", "table", "horse", "garden", "letter", "bridge"]
TAILS = ["", " every morning", " near the river", " with great care", " for the village", " before the storm"]
# prompt wording -> sentences in the answer
KINDS = {"Say one thing about {}.": 1, "Say two things about {}.": 2, "Tell the whole story of {}.": 6}


def sentence(subject, rng):
    return (f"{subject[0].upper()}{subject[1:]} {rng.choice(VERBS)} the {rng.choice(ADJECTIVES)} "
            f"{rng.choice(OBJECTS)}{rng.choice(TAILS)}.")


def make_rows(subjects, count, rng):
    """{"input", "output", "sentences"} rows: a prompt and that many sentences about its subject."""
    rows = []
    for _ in range(count):
        wording, sentences = rng.choice(list(KINDS.items()))
        subject = rng.choice(subjects)
        rows.append({"input": f"{wording.format(subject)} Answer:",
                     "output": " " + " ".join(sentence(subject, rng) for _ in range(sentences)),
                     "sentences": sentences})
    return rows


def fitting_target_len(rows, tokenizer):
    """A --target_max_len every answer of one or two sentences fits (eos included) and no six-sentence one does."""
    lengths = {kind: [len(tokenizer(row["output"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
                      for row in rows if row["sentences"] == kind] for kind in set(KINDS.values())}
    limit = max(lengths[2])
    if min(lengths[6]) <= limit:
        raise SystemExit("a six-sentence answer fits beside the two-sentence ones: change the vocabulary")
    return limit


def tokenized(rows, tokenizer, target_max_len, eos_on_cut):
    """(source_ids, target_ids) per row by tokenize_rows; with eos_on_cut, a cut target's last token is eos."""
    batch = tokenize_rows({"input": [r["input"] for r in rows], "output": [r["output"] for r in rows]},
                          tokenizer, source_max_len=64, target_max_len=target_max_len)
    pairs = []
    for source, target, dropped in zip(batch["source_ids"], batch["target_ids"], batch["target_dropped"]):
        if eos_on_cut and dropped:
            target = [*target[:-1], tokenizer.eos_token_id]
        pairs.append((source, target))
    return pairs


def padded_batch(pairs, pad_id):
    """input_ids, attention_mask and labels (-100 outside the target), padded on the right."""
    width = max(len(s) + len(t) for s, t in pairs)
    ids, mask, labels = [], [], []
    for source, target in pairs:
        row = source + target
        gap = width - len(row)
        ids.append(row + [pad_id] * gap)
        mask.append([1] * len(row) + [0] * gap)
        labels.append([-100] * len(source) + target + [-100] * gap)
    return torch.tensor(ids), torch.tensor(mask), torch.tensor(labels)


def train(pairs, vocab_size, steps, batch_size, seed, pad_id):
    model = build_model(vocab_size, hidden_size=128, num_layers=2, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    order = random.Random(seed)
    model.train()
    loss = None
    for step in range(steps):
        ids, mask, labels = padded_batch(order.sample(pairs, batch_size), pad_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        for group in optimizer.param_groups:  # linear decay to zero
            group["lr"] = 2e-3 * (1 - (step + 1) / steps)
    model.eval()
    return model, loss.item()


def eos_probabilities(model, pairs, rows, tokenizer, target_max_len):
    """Mean P(eos) at true ends of fitting answers, at the cut place of six-sentence answers, and at the
    full stops inside six-sentence answers before the cut (teacher-forced, full answers)."""
    eos, stop = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(".")
    places = {"true_end": [], "cut_place": [], "inner_sentence_end": []}
    for (source, target), row in zip(pairs, rows):
        with torch.no_grad():
            probs = model(input_ids=torch.tensor([source + target])).logits[0].softmax(-1)[:, eos]
        before = len(source) - 1  # probs[before + k] is P(eos) as target token k
        if row["sentences"] < 6:
            places["true_end"].append(float(probs[before + len(target) - 1]))
            continue
        places["cut_place"].append(float(probs[before + target_max_len - 1]))
        places["inner_sentence_end"] += [float(probs[before + k + 1]) for k in range(target_max_len - 1)
                                         if target[k] == stop]
    return {name: round(sum(values) / len(values), 4) for name, values in places.items()}


def generations(model, rows, tokenizer, max_new_tokens, batch_size=50):
    """Per kind: how many greedy generations stopped at a sentence end, stopped mid-sentence, ran on, and
    how many wrote at least the sentences asked for before stopping (or before max_new_tokens)."""
    counts = {kind: {"stopped_complete": 0, "stopped_mid_sentence": 0, "ran_to_max_new_tokens": 0,
                     "wrote_all_sentences": 0} for kind in sorted(set(KINDS.values()))}
    pad = tokenizer.unk_token_id
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        sources = [tokenizer(tokenizer.bos_token + row["input"], add_special_tokens=False)["input_ids"]
                   for row in batch]
        width = max(map(len, sources))
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in sources])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sources])
        with torch.no_grad():
            outputs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=pad)[:, width:].tolist()
        for row, output in zip(batch, outputs):
            ending, text = outcome(output, tokenizer)
            counts[row["sentences"]][ending] += 1
            counts[row["sentences"]]["wrote_all_sentences"] += text.count(".") >= row["sentences"]
    return counts


def outcome(output, tokenizer):
    """(how one generation ended: at eos after a full stop, at eos after anything else, or not at all; its text)."""
    eos = tokenizer.eos_token_id
    if eos not in output:
        return "ran_to_max_new_tokens", tokenizer.decode(output)
    text = tokenizer.decode(output[:output.index(eos)]).strip()
    return ("stopped_complete" if text.endswith(".") else "stopped_mid_sentence"), text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--train_rows", type=int, default=3000)
    parser.add_argument("--held_out_rows", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    tokenizer = train_tokenizer(SAMPLE_DATA_DIR, vocab_size=2048)
    rng = random.Random(args.seed)
    train_rows = make_rows(SUBJECTS[:-HELD_OUT], args.train_rows, rng)
    held_out = make_rows(SUBJECTS[-HELD_OUT:], args.held_out_rows, rng)
    target_max_len = fitting_target_len(train_rows + held_out, tokenizer)
    cut_share = sum(row["sentences"] == 6 for row in train_rows) / len(train_rows)
    full_pairs = tokenized(held_out, tokenizer, 10_000, eos_on_cut=False)
    report = {"target_max_len": target_max_len, "cut_share": round(cut_share, 3), "steps": args.steps,
              "batch_size": args.batch_size, "seed": args.seed, "arms": {}}
    for arm, eos_on_cut in (("no_eos_on_cut", False), ("eos_on_cut", True)):
        start = time.perf_counter()
        pairs = tokenized(train_rows, tokenizer, target_max_len, eos_on_cut)
        model, loss = train(pairs, len(tokenizer), args.steps, args.batch_size, args.seed, tokenizer.eos_token_id)
        report["arms"][arm] = {
            "final_loss": round(loss, 4), "train_seconds": round(time.perf_counter() - start, 1),
            "p_eos": eos_probabilities(model, full_pairs, held_out, tokenizer, target_max_len),
            "generations": generations(model, held_out, tokenizer, max_new_tokens=3 * target_max_len)}
    if args.json:
        print(json.dumps(report))
        return
    print(f"target_max_len {target_max_len}; {cut_share:.0%} of training targets cut; {args.steps} steps of "
          f"{args.batch_size}; held-out rows {len(held_out)}")
    for arm, result in report["arms"].items():
        print(f"\n{arm}: final loss {result['final_loss']}, {result['train_seconds']} s")
        print("  P(eos): " + ", ".join(f"{name} {value}" for name, value in result["p_eos"].items()))
        for kind, counts in result["generations"].items():
            print(f"  {kind} sentence(s) asked: " + ", ".join(f"{name} {value}" for name, value in counts.items()))


if __name__ == "__main__":
    main()
