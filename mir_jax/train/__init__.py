"""Training: `partition` (what trains), `step` (one sharded step), `loop` (the loop), `metrics`,
`evaluations`, `config_check` and `dry_run`. This file imports nothing, so `mir_jax.evals`
can use `train.step` while `train.loop` uses `mir_jax.evals`.
"""
