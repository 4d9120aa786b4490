"""Defaults shared by every experiment: the authors' reference setup.

MLP in-200-200-200-out, batch 256, SGD with momentum 0.9 at 5e-3, weight decay
1e-3, global-norm clip 50, multipliers W : W̄ : V : V̄ = 1 : 0.2 : 1 : 4.
"""

import ml_collections


def get_config(runlocal: bool | str = False) -> ml_collections.ConfigDict:
  """The reference setup; ``runlocal`` (or ``--config=FILE:runlocal``) shrinks
  it to a seconds-long run for tests."""
  runlocal = runlocal in (True, "runlocal", "True", "true", "1")
  c = ml_collections.ConfigDict()
  c.experiment = "table1"
  c.dataset = "mnist"
  c.data_dir = ""           # local files or tfds data_dir; see README
  c.source = "auto"         # auto | local | tfds
  c.method = "sal"
  c.hidden = (200, 200, 200)
  c.ratio = 1.0             # downstream width ratio at hidden levels
  c.nonlinearity = ""       # D_d; "" = the method's default
  c.v_bar_signal = "preactivation"
  c.loss = ""               # "" = softmax CE, or sigmoid CE if multi-label
  c.batch_size = 256
  c.unroll = 1              # steps per iteration of the scanned epoch (speed)
  c.member_devices = 0      # local devices a cell's members split over: 0 =
                            # the most that split them evenly, 1 = one device
  c.matmul_precision = ""   # jax.default_matmul_precision; "" = the backend's
                            # default (TF32 on recent NVIDIA GPUs), "highest" =
                            # full float32 as on CPU, "BF16_BF16_F32" = bf16
                            # operands, float32 sums (faster on GPUs)
  c.update_dtype = ""       # dtype of the rules' updates G: "" = the weights'
                            # (float32), "bfloat16" = half their traffic
  c.momentum_dtype = ""     # dtype the momentum is stored in, likewise
  c.epochs = 20
  c.seeds = 5
  c.seed = 0                # first seed; members use seed, seed+1, ...
  c.learning_rate = 5e-3
  c.momentum = 0.9
  c.weight_decay = 1e-3
  c.clip_norm = 50.0        # <= 0 disables clipping
  c.multipliers = (1.0, 0.2, 1.0, 4.0)
  c.diagnostics = False
  c.train_size = 0          # 0 = the whole training set
  c.validation_size = 0     # held out of the training set when > 0
  c.checkpoint_every = 5    # epochs between checkpoints; 0 disables them
  c.keep_checkpoints = 2    # newest checkpoints kept per cell
  if runlocal:
    c.hidden = (16, 16)
    c.batch_size = 8
    c.epochs = 2
    c.seeds = 2
    c.checkpoint_every = 1
  return c
