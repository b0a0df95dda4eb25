"""The judge side's commands, one module each, with ``main(argv)`` and the console entry point
``console_main()``: review (``qlora-judge``), elo, relative_score, qa_baseline,
download_benchmarks."""
