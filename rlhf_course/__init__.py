"""rlhf_course: rebuild the recipe behind ChatGPT, stage by stage, on a CPU in minutes.

Stages (one module each): `world` (the toy assistant world and its gold labeler), `models` and
`pretrain` (tokenizer and tiny base model), then SFT, comparisons, reward model, PPO, iterations
and evaluation in later modules. `hardware.detect_profile()` picks `cpu`, `t4` or `a100`.
"""

__version__ = "0.1.0"
