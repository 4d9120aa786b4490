"""Defaults shared by every experiment: the authors' reference setup.

MLP in-200-200-200-out, batch 256, SGD with momentum 0.9 at 5e-3, weight decay
1e-3, global-norm clip 50, multipliers W : W̄ : V : V̄ = 1 : 0.2 : 1 : 4
(docs/algorithm.md, "Reference training setup"). A field left None takes the
default named in its comment.
"""

import ml_collections
from ml_collections import config_dict


def is_runlocal(runlocal: bool | str) -> bool:
  """Whether ``get_config``'s argument (``--config=FILE:runlocal``) asks for
  a smoke run."""
  return runlocal in (True, "runlocal", "True", "true", "1")


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks ``c`` to a smoke run of seconds on a data subset: it checks that
  an experiment runs end to end; its accuracies mean nothing."""
  c.data.train_size = 512
  c.data.batch_size = 32
  c.model.hidden = (16, 16)
  c.run.epochs = 2
  c.run.seeds = 2
  c.run.checkpoint_every = 1
  c.run.smoke = True
  return c


def get_config(runlocal: bool | str = False) -> ml_collections.ConfigDict:
  """The reference setup; ``runlocal`` shrinks it (``smoke``). Experiment
  configs start from ``get_config()`` and call ``smoke`` last."""
  c = ml_collections.ConfigDict()
  c.experiment = "table1"

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "mnist"
  c.data.data_dir = config_dict.placeholder(str)  # local files / tfds data_dir
  c.data.source = "auto"          # auto | local | tfds
  c.data.batch_size = 256
  c.data.train_size = config_dict.placeholder(int)  # None: all of it
  c.data.validation_size = 0      # held out of the training set when > 0

  c.model = ml_collections.ConfigDict()
  c.model.method = "sal"          # sgd fa wm kp sal linear; table1: all or a,b
  c.model.hidden = (200, 200, 200)
  c.model.ratio = 1.0             # downstream width ratio at hidden levels
  c.model.nonlinearity = config_dict.placeholder(str)  # D_d; None: method's
  c.model.v_bar_signal = "preactivation"               # or "activity"
  c.model.loss = config_dict.placeholder(str)  # None: softmax CE (sigmoid CE
                                               # for a multi-label dataset)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 5e-3
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-3
  c.optimizer.clip_norm = config_dict.FieldReference(50.0, field_type=float)
  # (clip_norm=None: no clip)
  c.optimizer.multipliers = (1.0, 0.2, 1.0, 4.0)  # W, W̄, V, V̄

  c.run = ml_collections.ConfigDict()
  c.run.epochs = 20
  c.run.seeds = 5
  c.run.seed = 0                  # first seed; members use seed, seed+1, ...
  c.run.diagnostics = False       # per-step gradient cosine, Lemma-1 gap, ...
  c.run.checkpoint_every = 5      # epochs between checkpoints; 0: none
  c.run.keep_checkpoints = 2      # newest checkpoints kept per cell
  c.run.member_devices = 0        # devices a cell's members split over; 0:
                                  # the most that split them evenly
  c.run.divergence_factor = config_dict.FieldReference(100.0, field_type=float)
  # (a member diverges at a loss above this times its first step's, or a
  # non-finite one; None: non-finite only)
  c.run.smoke = False             # set by :runlocal; labels its results

  c.compute = ml_collections.ConfigDict()  # speed; see sal_jax.compute
  c.compute.batched_products = config_dict.placeholder(bool)  # None: backend
  c.compute.update_dtype = config_dict.placeholder(str)    # None: float32
  c.compute.momentum_dtype = config_dict.placeholder(str)  # None: float32
  c.compute.matmul_precision = config_dict.placeholder(str)  # None: backend
  c.compute.xla_options = ""      # "NAME=VALUE ..." over the library's
  c.compute.unroll = 1            # steps per iteration of the scanned epoch
  return smoke(c) if is_runlocal(runlocal) else c
