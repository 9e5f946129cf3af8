"""Studies that combine every stage (layer 6): the validity study of the predictors.

Nothing in prunekit imports this package except the ``validate`` command.
"""
