"""Learning: how a network is trained from a signal model.

- :mod:`~crbnet.learning.training_config` — the configuration schema, its layers (defaults,
  the model's training defaults, config file, command line), TOML reading and ``--set``;
- :mod:`~crbnet.learning.training_data` — sampler, subspace, batch source and validation set;
- :mod:`~crbnet.learning.objective` — the registered loss in scaled units;
- :mod:`~crbnet.learning.schedule` — the learning-rate schedule;
- :mod:`~crbnet.learning.distributed` — data-parallel set-up under torchrun;
- :mod:`~crbnet.learning.fine_tune` — ``--init`` from a trained checkpoint;
- :mod:`~crbnet.learning.run_files` — the run directory: files written each epoch, resume;
- :mod:`~crbnet.learning.trainer` — the training loop.
"""
