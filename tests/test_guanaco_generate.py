"""qlora-guanaco-generate (examples/guanaco_generate.py): one answer, prompted as training rendered conversations."""

from conftest import run_python

from qlorakit.chat_data import TEMPLATE_CHOICES
from qlorakit.cli import guanaco_generate


def test_the_prompt_is_rendered_by_the_chosen_training_template(tiny_model_dir, random_adapter_dir, tmp_path):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] }}{% endfor %}"
                        "{% if add_generation_prompt %}<<assistant>>{% endif %}")
    flags = ["--model_name_or_path", tiny_model_dir, "--adapter", random_adapter_dir, "--question", "Hi?",
             "--temperature", "0", "--max_new_tokens", "2"]
    custom = run_python(["examples/guanaco_generate.py", *flags, "--chat_template", str(template)])
    assert custom.stdout.startswith("<<user>> Hi?<<assistant>>")
    guanaco = run_python(["examples/guanaco_generate.py", *flags])
    assert guanaco.stdout.startswith("### Human: Hi?### Assistant:")


def test_a_template_that_is_no_choice_is_refused_before_loading(tmp_path, run_in_process):
    result = run_in_process(guanaco_generate, ["--model_name_or_path", str(tmp_path / "no-model"),
                                               "--chat_template", "missing.jinja"])
    assert result.returncode == 2 and (f"'missing.jinja' is not {', '.join(TEMPLATE_CHOICES)}, tokenizer:NAME"
                                          in result.stderr.splitlines()[-1])
