"""Training: one home per question (importing this package loads nothing heavy).

- ``datamodule``: what a job reads — subjects and voxels, dark knowledge, the feature bank, mixed-subject batches,
  the epoch sampler, validation chunks (a LightningDataModule, :class:`~afo.training.datamodule.TrainingData`).
- ``task``: the LightningModule — SmoothL1 + LayerSelector entropy, the dark-knowledge targets, AdaBelief, val r.
- ``fit``: one job in named steps (data, model, training, soup, outputs); :class:`~afo.training.fit.TrainSpec`.
- ``resume``: the resumable state in ``<out>/work/`` (top-k, last state, finished marker, lock, metrics history).
- ``monitor``: a log line per epoch and TensorBoard events.
- ``soup``: the greedy soup.
- ``modelfile``: the model configuration and the model file (``model.pt``) as typed dataclasses.
- ``predict``: predictions per unique image of a model file (dark knowledge, evaluation).
"""
