"""MRNet downstream classification (thesis Ch. 3 SKID / SSLACL and Ch. 4 BCL fine-tuning).

* ``data``      exams with their real slice counts, per-exam slice draws (uniform / normal),
                oversampling and class weights
* ``model``     the downstream nets (SKIDDownstream, DivideAndTeachClassifier, SliceMaxClassifier)
                and their pretrained starts; ``build``, which ``models.build_model(config.model,
                task='mrnet', num_outputs=...)`` calls
* ``metrics``   AUC / sensitivity / specificity / accuracy with bootstrap intervals per task
* ``task``      ``mrnet_task`` on the run skeleton and ``train_downstream(config, workdir)``
* ``ensemble``  the weighted soft vote of several runs (Eq. 3.1-3.4, 4.19-4.20), a CLI

Configs: ``configs/mrnet.py``. Submodules are imported explicitly.
"""
