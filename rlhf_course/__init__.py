"""rlhf_course: rebuild the recipe behind ChatGPT, stage by stage, on a CPU in minutes.

One module per stage, in course order: `pretrain` (base), `sft` (demos, sft), `comparisons`,
`reward` (rm), `ppo`, `iterate`, `evaluate` (eval), `moderation`, `beyond`; each runs through
`run_<stage>(cfg, run_dir)`. Below them the shared measurement and records (`heldout`,
`rankings`, ...), the toy world and its gold labeler (`world`), and the foundation (`runs`,
`config`, `models`, ...); above them the interfaces (`cli`, the widgets, the report).
ARCHITECTURE.md at the repo root draws the layers. `hardware.detect_profile()` picks `cpu`,
`t4` or `a100`.
"""

import os as _os

__version__ = "0.1.0"

# bf16 autocast on a CPU builds a oneDNN primitive for every matmul shape it meets and keeps up
# to 1,024 of them, each with its own buffers; the reward model, whose batches are padded to a
# different length each step, grew to 4 GB that way. 32 keeps the course's shapes that repeat
# (same speed, same numbers, 2.6 GB). It is read once, at the process's first bf16 matmul, so it
# must be set before one: importing the package does it, unless you have set it yourself.
_os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")
