"""Helpers of the resume tests: data drawn from (seed, epoch), and a kill at the start of an epoch."""

import keras
import numpy as np

from tfflannel.resume import epoch_seed


class KillAtEpoch(keras.callbacks.Callback):
    """Raises KeyboardInterrupt as epoch `epoch` (0-based) begins: the epochs before it are committed, as a kill there.

    Args:
        epoch: int. The epoch that never starts.
    """

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated kill")


class SeededBatches(keras.utils.PyDataset):
    """`batches` batches per epoch, batch i of epoch e made by `make_batch(rng)` with rng seeded by (seed 0, e, i).

    Args:
        make_batch: callable(numpy Generator) -> (x, y).
        batches: int. Batches per epoch.
        first_epoch: int. The epoch the first batch belongs to. Defaults to `0`.
    """

    def __init__(self, make_batch, batches, first_epoch=0):
        super().__init__()
        self.make_batch, self.batches, self.epoch = make_batch, batches, first_epoch

    def __len__(self):
        return self.batches

    def __getitem__(self, index):
        return self.make_batch(np.random.default_rng([epoch_seed(0, self.epoch), index]))

    def on_epoch_end(self):
        self.epoch += 1
