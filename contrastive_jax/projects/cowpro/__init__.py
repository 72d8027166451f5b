"""CoWPro: one-shot segmentation by correlation-weighted prototype aggregation (thesis Ch. 7).

* ``data``          phantom volumes, superpixel pseudo-masks, episodic queries (``ORGAN_IDS``)
* ``model``         encoders, prototypes and the CoWPro net; ``build`` (config -> net), which
                    ``models.build_model(config.model, task='cowpro')`` calls
* ``losses``        weighted pixel cross-entropy + cyclic consistency (Eq. 7.14)
* ``segmentation``  Dice and the 1-shot evaluation protocol (Sec. 7.4.2)
* ``task``          ``cowpro_task`` on the run skeleton and ``train_cowpro(config, workdir)``

The CHAOS source stays with the other file sources (``contrastive_jax.data.sources.chaos``).
Submodules are imported explicitly (``from contrastive_jax.projects.cowpro import data``).
"""
