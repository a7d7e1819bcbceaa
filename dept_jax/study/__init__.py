"""What DEPT buys you, measured: a grid of variants x seeds x config values at one token budget,
run resumably (in parallel where devices allow), summarised as a table with paired differences
against STD and plots. Entry point: runner.run (python -m dept_jax.main --mode=study)."""
