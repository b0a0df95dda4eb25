import json

from qlorakit.cli import plot_training

HISTORY = [
    {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5},
    {"step": 2, "eval_loss": 1.7}, {"step": 2, "mmlu_eval_accuracy": 0.25, "mmlu_loss": 1.4},
    {"step": 3, "loss": 1.2}, {"step": 3, "train_runtime": 9.0},
]


def test_curves_are_collected_per_series_in_step_order():
    curves = plot_training.collect_curves(HISTORY)
    assert curves["train loss"] == ([1, 2, 3], [2.0, 1.5, 1.2])
    assert curves["eval loss"] == ([2], [1.7])
    assert curves["MMLU accuracy"] == ([2], [0.25]) and curves["MMLU loss"] == ([2], [1.4])


def test_the_newest_state_of_a_run_is_plotted(tmp_path):
    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": HISTORY}))
    plot_training.main([str(tmp_path)])
    with open(tmp_path / "training_curves.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_picture_says_what_it_shows_not_the_folder_name():
    text = plot_training.loss_axes_text(["train loss", "eval loss"])
    assert text == {"title": "Train loss and eval loss by optimizer step", "xlabel": "optimizer step",
                    "ylabel": "cross-entropy (nats per trained token)"}
