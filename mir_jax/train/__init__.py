"""Training: what trains (`partition`), one sharded step (`step`), the loop (`loop`), orbax
checkpoints (`checkpoint`), logs and plots (`metrics`), where a run's weights start
(`init_from`) and the ahead-of-time pod check (`dry_run`).

Import the modules themselves (`from mir_jax.train.loop import train_and_evaluate`); this
package file imports nothing, so `mir_jax.evals` can use `train.step` while `train.loop`
uses `mir_jax.evals`.
"""
