"""Jigsaw pretext learning, SSLACL and SKID v1/v2/v3 (thesis Ch. 3).

* ``data``   permutation sets (Alg. 3.1), jumbled 3x3 patches and labels (Alg. 3.2), patch
             augmentation, downstream slice sampling
* ``model``  the 9-branch pretext nets, their downstream heads; ``build`` (config -> net), which
             ``models.build_model(config.model, task='jigsaw', num_classes=...)`` calls
* ``task``   ``jigsaw_task`` on the run skeleton and ``train_pretext(config, workdir)``

The soft-voting ensemble of the downstream classifiers is ``contrastive_jax.evaluate.ensemble``.
Submodules are imported explicitly (``from contrastive_jax.projects.jigsaw import data``).
"""
