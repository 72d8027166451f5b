"""Research projects built on the library, one sub-package each (data, model, losses, task together).

* ``jigsaw``  jigsaw pretext SSLACL / SKID v1-v3 (thesis Ch. 3)
* ``cowpro``  CoWPro one-shot segmentation (thesis Ch. 7)

Each project's ``task`` module builds a :class:`contrastive_jax.train.run.Task` for the one skeleton
``contrastive_jax.train.run`` (``launch.TASKS`` names it); its network comes from the one factory
``contrastive_jax.models.build_model`` (``models.MODELS`` names the project's ``model.build``).
Importing a project package imports nothing: the launcher reads the configs without importing JAX.
"""
