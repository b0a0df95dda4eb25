"""Glue shared by the judge commands: logging that never shows secrets, shared flags, tables."""

import logging
import sys

from .errors import InputError


def configure_logging(verbose=False):
    """Log to stderr; keep the HTTP libraries quiet so request headers never reach a log."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def expand_review_paths(paths):
    """Review files from the command line; a directory stands for its ``*.jsonl`` files."""
    import glob
    import os

    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(path, "*.jsonl")))
            if not found:
                raise InputError(f"{path}: no .jsonl files in directory")
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise InputError(f"no such file: {path}")
    return files


def expand_reference_abbreviations(argv, reference_flags, parser):
    """``argv`` with the reference script's abbreviations spelled out in full.

    argparse accepts any unambiguous prefix of a long flag. The reference scripts had fewer
    flags, so some prefixes they accepted (``--max`` for ``--max-tokens``, ``--mo`` for
    ``--model``) now match two of ours; a prefix that matches exactly one of
    ``reference_flags`` means what it meant there. Everything else is left to argparse, whose
    errors name the flags an ambiguous prefix could mean.

    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> for flag in ("--model", "--model-names", "--max-tokens", "--max-retries"):
    ...     _ = p.add_argument(flag)
    >>> expand_reference_abbreviations(["--mo", "gpt-4", "--max=9", "--max-r", "2"], ["--model", "--max-tokens"], p)
    ['--model', 'gpt-4', '--max-tokens=9', '--max-r', '2']
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    ours = set(parser._option_string_actions)
    expanded = []
    for position, token in enumerate(argv):
        if token == "--":
            return expanded + argv[position:]
        flag, equals, value = token.partition("=")
        if flag.startswith("--") and flag not in ours:
            meant = [full for full in reference_flags if full.startswith(flag)]
            if len(meant) == 1 and meant[0] in ours:
                token = meant[0] + equals + value
        expanded.append(token)
    return expanded


ID_KEY_FLAG = "-id/--id-key"


def add_id_key_argument(parser):
    """``-id/--id-key``: the field that identifies a question in every file (the reference's flag)."""
    parser.add_argument(*ID_KEY_FLAG.split("/"), default=None, metavar="FIELD",
                        help="field that identifies a question, e.g. question_id (Vicuna) or message_id "
                             "(OpenAssistant); default: found in the files, and said which")


def add_naming_arguments(parser):
    """Flags that decide which question and which model each review row is about
    (see judgekit.reviews)."""
    add_id_key_argument(parser)
    parser.add_argument("--judge", default="gpt-4",
                        help="judge name in the file names, <A>-vs-<B>-<judge>-reviewer... (default gpt-4)")
    parser.add_argument("--answers", action="append", default=[], metavar="NAME=FILE",
                        help="answer files whose answer_id values identify NAME's answers, overriding "
                             "the order in file names (needed for the reference's relative-gpt-3.5 files); "
                             "repeat for several")


def format_table(header, rows):
    """A plain-text table, columns padded to their widest cell."""
    cells = [header] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def load_review_judgments(args):
    """``(files, judgments)`` for the scoring scripts' positional files and naming flags."""
    from . import reviews

    configure_logging()
    files = expand_review_paths(args.files)
    owners = reviews.parse_answer_owner_specs(args.answers, args.id_key, ID_KEY_FLAG)
    return files, reviews.load_judgments(files, judge=args.judge, owners=owners, id_key=args.id_key,
                                         id_flag=ID_KEY_FLAG)
