"""A small synthetic corpus for tokenizer, pretraining and sampling tests (no world needed)."""

import random

NAMES = ["Ada Lovelace", "Alan Turing", "Émile Zola", "Grace Hopper", "Nikola Tesla", "Li Bai"]
JOBS = ["poet", "engineer", "chemist", "sailor"]


def synthetic_corpus(n: int = 300, seed: int = 0, chat_every: int = 3,
                     names: list[str] = NAMES) -> list[str]:
    """Encyclopedia-like sentences with names and years; every `chat_every`-th document is a
    chat-formatted question and answer, so a tiny model learns to answer and to stop."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        name, year = rng.choice(names), rng.randint(1500, 1990)
        if i % chat_every == 0:
            docs.append(f"<|user|>\nWhen was {name} born?<|end|>\n<|assistant|>\n{name} was born in {year}.<|end|>\n")
        else:
            docs.append(f"{name} (born {year}) was a {rng.choice(JOBS)}. In {year + 20} they moved.")
    return docs
