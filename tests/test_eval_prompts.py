"""judgekit.prompts and the prompt/reviewer files judgekit ships (eval/judgekit/prompt_files/)."""

import json
import re
from pathlib import Path

import pytest

import judgekit
from judgekit import prompts, verdicts
from judgekit.commands import review
from judgekit.errors import InputError

OURS = Path(prompts.PACKAGED_FILES_DIR)
REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "qlora-eval" / "prompts"


class TestShippedFiles:
    @pytest.mark.parametrize("name", ["judge_prompt_threeclass.jsonl", "judge_prompt_relative.jsonl"])
    def test_every_reviewer_has_its_prompt_and_renders(self, name):
        table = prompts.load_prompts(OURS / name)
        reviewers = prompts.load_reviewers(OURS / "judge_reviewer.jsonl")
        prompts.check_reviewers_have_prompts(reviewers, table, "r", name)
        for category in ("coding", "math", "roleplay"):
            reviewer = prompts.select_reviewer(reviewers, category)
            system, user = prompts.render_messages(table[reviewer.prompt_id], "QQQ", "AAA", "BBB")
            assert system["role"] == "system" and user["role"] == "user"
            assert user["content"].index("QQQ") < user["content"].index("AAA") < user["content"].index("BBB")
            assert not re.search(r"\{\w+\}", user["content"])  # every placeholder filled
        assert prompts.select_reviewer(reviewers, "roleplay").category == "general"

    def test_fields_match_the_reference_layout(self):
        for name in ("judge_prompt_threeclass.jsonl", "judge_prompt_relative.jsonl"):
            for line in (OURS / name).read_text().splitlines():
                assert set(json.loads(line)) == {"prompt_id", "system_prompt", "prompt_template", "defaults",
                                                 "description", "category"}
        for line in (OURS / "judge_reviewer.jsonl").read_text().splitlines():
            row = json.loads(line)
            assert set(row) == {"reviewer_id", "prompt_id", "metadata", "description", "category"}
            assert set(row["metadata"]) == {"temperature", "max_tokens"}

    @pytest.mark.skipif(not REFERENCE.is_dir(), reason="needs ../shared/reference")
    def test_worded_by_us(self):
        def words(directory, names):
            texts = []
            for name in names:
                for line in (directory / name).read_text().splitlines():
                    row = json.loads(line)
                    texts += [row["system_prompt"], row["prompt_template"], row["defaults"]["prompt"]]
            return " ".join(texts).lower().split()

        theirs = " ".join(words(REFERENCE, ["vicuna_prompt_threeclass.jsonl", "vicuna_prompt_relative.jsonl",
                                            "oa_prompt_threeclass.jsonl"]))
        ours = words(OURS, ["judge_prompt_threeclass.jsonl", "judge_prompt_relative.jsonl"])
        runs = {" ".join(ours[i:i + 6]) for i in range(len(ours) - 5)}
        assert [run for run in runs if run in theirs] == []  # no run of 6 words in common


class TestPackagedDefaults:
    ARGS = ["-q", "q.jsonl", "-a", "a.jsonl", "b.jsonl", "-o", "reviews/"]

    def test_defaults_are_readable_files_inside_the_package(self):
        package_dir = Path(judgekit.__file__).resolve().parent
        for kind in verdicts.KINDS:
            path = prompts.packaged_prompt_file(kind)
            assert Path(path).resolve().parent.parent == package_dir
            assert len(prompts.load_prompts(path)) == 3
            assert verdicts.infer_verdict_kind(path) == kind  # the file name says its verdict shape
        assert set(prompts.load_reviewers(prompts.PACKAGED_REVIEWER_FILE)) == {"general", "coding", "math"}

    @pytest.mark.parametrize("verdict, expected", [(None, verdicts.THREECLASS), ("threeclass", verdicts.THREECLASS),
                                                   ("scores", verdicts.SCORES)])
    def test_review_picks_the_prompt_of_its_verdict(self, verdict, expected):
        args = review.parse_args(self.ARGS + (["--verdict", verdict] if verdict else []))
        assert args.prompt_file == prompts.packaged_prompt_file(expected) and args.verdict == expected
        assert args.reviewer_file == prompts.PACKAGED_REVIEWER_FILE

    def test_named_files_win(self):
        args = review.parse_args(self.ARGS + ["-p", "mine_threeclass.jsonl", "--reviewer-file", "mine_reviewer.jsonl"])
        assert (args.prompt_file, args.reviewer_file) == ("mine_threeclass.jsonl", "mine_reviewer.jsonl")


class TestSelectAndRender:
    def test_unknown_category_without_fallback(self):
        reviewers = {"coding": prompts.Reviewer("r", 1, "coding")}
        with pytest.raises(InputError, match="unknown prompt category 'poetry'"):
            prompts.select_reviewer(reviewers, "poetry")

    def test_template_with_unknown_placeholder(self):
        prompt = prompts.JudgePrompt(1, "s", "{question} {rubric}", {"prompt": "p"}, "general")
        with pytest.raises(InputError, match="rubric"):
            prompts.render_messages(prompt, "q", "a", "b")

    def test_reviewer_metadata_defaults(self, tmp_path):
        path = tmp_path / "r.jsonl"
        path.write_text(json.dumps({"reviewer_id": "x", "prompt_id": 1, "category": "general"}) + "\n")
        reviewer = prompts.load_reviewers(path)["general"]
        assert (reviewer.temperature, reviewer.max_tokens) == (0.2, 1024)

    def test_prompt_row_missing_field(self, tmp_path):
        path = tmp_path / "p.jsonl"
        path.write_text(json.dumps({"prompt_id": 1, "system_prompt": "s"}) + "\n")
        with pytest.raises(InputError, match=r"p.jsonl:1: missing field\(s\) prompt_template"):
            prompts.load_prompts(path)
