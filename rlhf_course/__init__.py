"""rlhf_course: rebuild the recipe behind ChatGPT, stage by stage, on a CPU in minutes.

Stages (one module each): `world` (the toy assistant world and its gold labeler), `models` and
`pretrain` (tokenizer and tiny base model), then SFT, comparisons, reward model, PPO, iterations
and evaluation in later modules. `hardware.detect_profile()` picks `cpu`, `t4` or `a100`.
"""

import os as _os

__version__ = "0.1.0"

# bf16 autocast on a CPU builds a oneDNN primitive for every matmul shape it meets and keeps up
# to 1,024 of them, each with its own buffers; the reward model, whose batches are padded to a
# different length each step, grew to 4 GB that way. 32 keeps the course's shapes that repeat
# (same speed, same numbers, 2.6 GB). It is read once, at the process's first bf16 matmul, so it
# must be set before one: importing the package does it, unless you have set it yourself.
_os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")
