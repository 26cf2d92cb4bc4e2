"""Training: one home per question (importing this package loads nothing heavy).

- ``subjects``: what a job reads about its subjects — voxels, trials, splits, where dark knowledge is (indices only;
  no Lightning, so prediction and probing jobs start without it).
- ``datamodule``: mixed-subject batches, the epoch sampler, validation chunks (a LightningDataModule,
  :class:`~afo.training.datamodule.TrainingData`).
- ``task``: the LightningModule — SmoothL1 + LayerSelector entropy, the dark-knowledge targets, AdaBelief, val r.
- ``fit``: one job in named steps (data, model, training, soup, outputs); :class:`~afo.training.fit.TrainSpec`.
- ``resume``: the resumable state in ``<out>/work/`` (top-k, last state, finished marker, lock, metrics history).
- ``monitor``: a log line per epoch and TensorBoard events.
- ``soup``: the greedy soup.
- ``modelfile``: the model configuration and the model file (``model.pt``) as typed dataclasses.
- ``predict``: predictions per unique image of a model file (dark knowledge, evaluation).
"""
