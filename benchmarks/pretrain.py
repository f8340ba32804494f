"""Pretraining speed on the cpu preset: our default precision against fp32, in one process.

    python benchmarks/pretrain.py [--steps 60]

Prints tokens/s for each, their ratio, and the time the full preset (`BaseConfig.steps`) would
take at the measured speed; the issue's goal is at most 3 minutes on 2 cores. Both runs train the
same model from the same initial weights on the same corpus, interleaved in halves so that a
change in machine load hits both.
"""

import argparse
import time

from rlhf_course.config import BaseConfig
from rlhf_course.models import build_model, train_tokenizer
from rlhf_course.pretrain import pretrain
from rlhf_course.world import World


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per measurement half")
    args = parser.parse_args()

    preset = BaseConfig.preset("cpu")
    start = time.perf_counter()
    texts = World(preset.seed).corpus(preset.corpus_docs, seed=preset.seed, forum_quality=preset.forum_quality)
    tokenizer = train_tokenizer(texts, preset.vocab_size, model_max_length=preset.max_seq_len)
    print(f"corpus + tokenizer: {time.perf_counter() - start:.1f} s")

    speeds: dict[str, list[float]] = {"fp32": [], "default": []}
    for _half in range(2):
        for name, autocast in (("fp32", "off"), ("default", "auto")):
            cfg = BaseConfig.preset("cpu", steps=args.steps, autocast=autocast)
            result = pretrain(build_model(cfg, tokenizer), tokenizer, texts, cfg, progress=False)
            speeds[name].append(result.tokens_per_second)
            if _half == 0 and name == "default":
                print(f"default precision here: {result.precision}")
    fp32, ours = (sum(v) / len(v) for v in (speeds["fp32"], speeds["default"]))
    tokens = preset.steps * preset.batch_size * preset.block_size
    print(f"fp32     {fp32:9,.0f} tokens/s   full preset ≈ {tokens / fp32:5.0f} s")
    print(f"default  {ours:9,.0f} tokens/s   full preset ≈ {tokens / ours:5.0f} s")
    print(f"ratio default/fp32: {ours / fp32:.2f}x   (goal: full preset within 180 s)")


if __name__ == "__main__":
    main()
