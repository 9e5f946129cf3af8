"""The application layer: one module per ``prunekit`` subcommand (the CLI parses, these do the work).

``run`` (:func:`~prunekit.commands.run.run_command`), ``plan``
(:func:`~prunekit.commands.plan.plan_command`), ``estimate``
(:func:`~prunekit.commands.estimate.run_estimate_command`), ``evaluate``
(:func:`~prunekit.commands.evaluate.evaluate_checkpoint`), ``validate``
(:func:`~prunekit.commands.validate.validate_command`) and ``info``
(:func:`~prunekit.commands.info.info_command`). Modules load on demand, so the CLI starts without
importing torch.
"""
