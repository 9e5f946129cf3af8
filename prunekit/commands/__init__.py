"""The application layer: one module per ``prunekit`` subcommand (the CLI parses, these do the work).

``plan`` (:func:`~prunekit.commands.plan.plan_only`), ``estimate``
(:func:`~prunekit.commands.estimate.run_estimate_command`), ``evaluate``
(:func:`~prunekit.commands.evaluate.evaluate_checkpoint`); ``run`` is :func:`prunekit.pipeline.run` and
``info`` is :func:`prunekit.pruning.checkpoint.checkpoint_info`. Modules load on demand, so the CLI
starts without importing torch.
"""
