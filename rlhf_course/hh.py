"""The real-data track (`track="hh"` in the configs of stages 02-06): hub data beside the toy world.

The toy world measures every stage against a known truth, but its text is narrow. On a GPU the
course can also learn from what people wrote: real demonstrations (a messages-format dataset such
as no_robots, plus Dolly-style instructions turned into dialogues, the post's "InstructGPT
dataset transformed into a dialogue format"), Anthropic's HH-RLHF comparisons for the reward
model, and HH-RLHF conversations as extra PPO prompts. This module turns those datasets into the
records the stages already read:

- demonstrations: `{"messages": [...], "source": "hub_dialogues" | "hub_instructions"}`;
- rankings: one record per HH-RLHF pair, K = 2, the chosen reply ranked first, `source`
  "hh-rlhf", in the format of `rlhf_course.comparisons` (training pairs from the train split, a
  held-out preference set from the test split);
- prompts: `PromptTask`s holding a conversation up to its last user turn.

What it keeps apart: the gold labeler judges only toy-world prompts, so nothing real ever gets a
gold score. The reward model is measured on real data by its accuracy on held-out HH-RLHF pairs;
PPO's watched gold and every held-out evaluation stay on the toy world.

Loading goes through `hub.load_hub_dataset`, so a field takes a hub id (needs the hub) or a
local copy in the hub's schema (a JSON Lines/parquet/CSV file, or a folder with train and test
files). Every sample drawn here is seeded.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_course.data import ConversationError, validate_conversation
from rlhf_course.hub import HUB_KINDS, load_hub_dataset
from rlhf_course.jsonl import DataFormatError
from rlhf_course.rankings import ComparisonError, comparison_record, pairwise_accuracy
from rlhf_course.world import World

HH_SOURCE = "hh-rlhf"
"""`source` of rankings and prompts taken from HH-RLHF."""
HH_RANKER = "hh-rlhf crowdworkers (Anthropic, 2022)"
"""Who ranked an HH-RLHF pair: the crowdworkers who picked the better of two replies."""
DIALOGUE_SOURCE = "hub_dialogues"
"""`source` of real conversations from a messages-format dataset (`SFTConfig.hh_demos`)."""
INSTRUCTION_SOURCE = "hub_instructions"
"""`source` of Dolly-style instructions turned into dialogues (`SFTConfig.hh_instructions`)."""

_OFFLINE_ADVICE = ("A hub id needs the hub (internet); offline, point the field at a local copy in "
                   "the hub's schema: a JSON Lines/parquet/CSV file, or a folder of train and test files.")
_KIND_NAMES = {"messages": "a messages-format (like HuggingFaceH4/no_robots)",
               "dolly": "a Dolly-style (like databricks/databricks-dolly-15k)",
               "hh": "an HH-RLHF-format (like Anthropic/hh-rlhf)"}


class HubDataError(ValueError):
    """Real data for the 'hh' track cannot be used: the message names the config field, the
    dataset (and the record where one is at fault) and what to do."""


# --------------------------------------------------------------------------------------------
# Loading and sampling
# --------------------------------------------------------------------------------------------


def load_records(name_or_path: str | os.PathLike, kind: str, split: str = "train", field: str = "",
                 skipped: Counter | None = None, cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every usable record of `split` of a hub dataset (or local copy), converted by
    `hub.load_hub_dataset` (`kind` "messages", "dolly" or "hh"); unusable ones are counted by
    reason in `skipped`. Any failure raises `HubDataError` naming `field` (the config field that
    named the dataset), the dataset and, for an unreadable HH transcript, the record."""
    where = f"{field} = {str(name_or_path)!r}" if field else repr(str(name_or_path))
    try:
        ds = load_hub_dataset(name_or_path, kind, split=split, skipped=skipped, cache_dir=cache_dir)
    except DataFormatError as err:
        # The converter raised on one record; find which, so the message can point at it.
        at = _bad_record(name_or_path, kind, split, cache_dir)
        raise HubDataError(f"{where}, split {split!r}{at}: {err}. Fix or drop that record; the "
                           "other records are unaffected.") from err
    except ValueError as err:  # the loader's own checks: suffix, kind, missing columns
        sep = " " if str(err).endswith(("?", ".")) else ". "
        raise HubDataError(f"{where}: {err}{sep}This field needs {_KIND_NAMES.get(kind, kind)} dataset "
                           "in the hub's schema.") from err
    except Exception as err:  # the hub, the network or the files: say which dataset and field
        raise HubDataError(f"{where}: cannot load split {split!r} as a {kind!r} dataset "
                           f"({type(err).__name__}: {err}). {_OFFLINE_ADVICE}") from err
    return ds.to_list()


def _bad_record(name_or_path, kind: str, split: str, cache_dir) -> str:
    """', record N (line L)' for the first raw record the converter of `kind` rejects, or ''."""
    import datasets  # datasets takes seconds to import: only on track 'hh'

    path = Path(name_or_path)
    cache = str(cache_dir) if cache_dir is not None else None
    try:
        if path.is_file():
            fmt = {".parquet": "parquet", ".csv": "csv"}.get(path.suffix.lower(), "json")
            raw = datasets.load_dataset(fmt, data_files={split: str(path)}, split=split, cache_dir=cache)
        else:
            raw = datasets.load_dataset(str(name_or_path), split=split, cache_dir=cache)
    except Exception:  # only a diagnostic: the caller's message stands without it
        return ""
    convert = HUB_KINDS[kind][1]
    for i, row in enumerate(raw):
        try:
            convert(row)
        except DataFormatError:
            line = _jsonl_line(path, i) if path.suffix.lower() == ".jsonl" else None
            return f", record {i}" + (f" (line {line} of {path.name})" if line else "")
    return ""


def _jsonl_line(path: Path, index: int) -> int | None:
    # Blank lines hold no record, so the record's line is the index-th non-blank one.
    seen = -1
    with open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, start=1):
            if text.strip():
                seen += 1
                if seen == index:
                    return n
    return None


def subsample(records: Sequence[Any], n: int, seed: int | str, what: str = "records") -> list[Any]:
    """`n` of `records` drawn without replacement, in a random order fixed by `seed`. Raises
    `HubDataError` when there are fewer than `n` (the message says how many there are)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise HubDataError(f"subsample: n = {n!r} {what}; use a whole number >= 0")
    if n > len(records):
        raise HubDataError(f"asked for {n} {what}, but only {len(records)} are usable; lower the "
                           "count or use a larger dataset")
    rng = random.Random(f"hh.subsample:{what}:{seed}")
    return [records[i] for i in rng.sample(range(len(records)), n)]


def _counted(skipped: Counter) -> str:
    return (" (skipped: " + ", ".join(f"{v} {k}" for k, v in skipped.most_common()) + ")") if skipped else ""


# --------------------------------------------------------------------------------------------
# Demonstrations (stage `demos`)
# --------------------------------------------------------------------------------------------


def real_demonstrations(demos: str | os.PathLike, instructions: str | os.PathLike, n: int,
                        instruction_fraction: float, seed: int = 0,
                        cache_dir: str | os.PathLike | None = None) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """`n` real demonstrations, a seeded sample: round(`instruction_fraction` * n) Dolly-style
    instructions from `instructions` turned into dialogues (source "hub_instructions"), the rest
    conversations from the messages-format dataset `demos` (source "hub_dialogues"), each with a
    `dataset` field naming where it came from. Returns the records (dialogues first) and the
    records each dataset skipped, counted by reason."""
    if not 0 <= instruction_fraction <= 1:
        raise HubDataError(f"instruction_fraction = {instruction_fraction!r}: use a share in [0, 1]")
    n_instructions = round(instruction_fraction * n)
    parts = ((demos, "messages", n - n_instructions, DIALOGUE_SOURCE, "SFTConfig.hh_demos"),
             (instructions, "dolly", n_instructions, INSTRUCTION_SOURCE, "SFTConfig.hh_instructions"))
    out: list[dict[str, Any]] = []
    skipped: dict[str, dict[str, int]] = {}
    for name, kind, k, source, field in parts:
        if k == 0:  # nothing wanted from it: do not even touch the hub
            continue
        counts: Counter = Counter()
        rows = load_records(name, kind, field=field, skipped=counts, cache_dir=cache_dir)
        if k > len(rows):
            raise HubDataError(f"{field} = {str(name)!r}: {k} demonstrations wanted from it, but only "
                               f"{len(rows)} are usable{_counted(counts)}; lower SFTConfig.hh_demo_count "
                               "(or move the share with instruction_fraction), or use a larger dataset")
        picked = subsample(rows, k, seed, f"{kind} conversations")
        out += [{"messages": r["messages"], "source": source, "dataset": str(name)} for r in picked]
        skipped[source] = dict(counts)
    return out, skipped


def mix_in(records: Sequence[Mapping[str, Any]], extra: Sequence[Mapping[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """`records` and `extra` together in an order shuffled by `seed` (a new list of copies)."""
    out = [dict(r) for r in records] + [dict(r) for r in extra]
    random.Random(f"hh.mix_in:{seed}").shuffle(out)
    return out


# --------------------------------------------------------------------------------------------
# Comparisons (stages `comparisons` and `rm`)
# --------------------------------------------------------------------------------------------


def ranking_record(preference: Mapping[str, Any], item_id: str, split: str = "train",
                   dataset: str = "") -> dict[str, Any]:
    """One conversational preference record (`prompt`, `chosen`, `rejected`, as
    `hub.convert_hh` makes) as a ranking record of K = 2: replies [chosen, rejected], ranking
    [0, 1], source "hh-rlhf", no toy-world task (the gold labeler cannot judge it). `split` is
    "train" or "heldout". Raises `ComparisonError` for a pair `comparisons` cannot rank (e.g.
    replies that differ only in spacing)."""
    for key in ("prompt", "chosen", "rejected"):
        if key not in preference:
            raise ComparisonError(f"{item_id}: preference record lacks {key!r} (found {sorted(preference)})")
    replies = [preference["chosen"][-1]["content"], preference["rejected"][-1]["content"]]
    record = comparison_record(preference["prompt"], replies, [0, 1], HH_RANKER, source=HH_SOURCE,
                               item_id=item_id)
    # The crowdworkers' judgement has no time stamp in the dataset; don't invent one.
    record.update(ranked_at=None, split=split, dataset=dataset)
    return record


def preference_rankings(name_or_path: str | os.PathLike, n: int, seed: int = 0, split: str = "train",
                        label: str = "train", field: str = "RewardConfig.hh_preferences",
                        skipped: Counter | None = None,
                        cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """`n` ranking records (see `ranking_record`) from a seeded sample of the HH-RLHF-format
    `split` of `name_or_path`, labelled `label`. Pairs that cannot be ranked are counted in
    `skipped` and replaced by the next in the sample. Raises `HubDataError` if too few are usable."""
    skipped = Counter() if skipped is None else skipped
    if n == 0:
        return []
    prefs = load_records(name_or_path, "hh", split, field, skipped, cache_dir)
    order = list(range(len(prefs)))
    random.Random(f"hh.preferences:{split}:{seed}").shuffle(order)
    out = []
    for i in order:
        try:
            out.append(ranking_record(prefs[i], f"hh-{split}-{i:06d}", label, str(name_or_path)))
        except ComparisonError as err:
            # convert_hh already dropped identical replies; these differ only in spacing.
            skipped["replies differ only in spacing" if "same text" in str(err) else "cannot be ranked"] += 1
            continue
        if len(out) == n:
            return out
    raise HubDataError(f"{field} = {str(name_or_path)!r}: asked for {n} pairs from split {split!r}, "
                       f"but only {len(out)} are usable{_counted(skipped)}; lower the count")


def hh_comparisons(name_or_path: str | os.PathLike, n_train: int, n_heldout: int, seed: int = 0,
                   cache_dir: str | os.PathLike | None = None) -> tuple[list[dict], list[dict], dict[str, int]]:
    """(training rankings, held-out rankings, skipped counts): `n_train` pairs from the train
    split and `n_heldout` from the test split (HH-RLHF's own held-out pairs, labelled
    "heldout"). A single local file has no test split, so it is refused when held-out pairs are
    wanted: the two sets would be the same records."""
    if n_heldout and Path(name_or_path).is_file():
        raise HubDataError(
            f"RewardConfig.hh_preferences = {str(name_or_path)!r} is a single file, so its held-out "
            "pairs would come from the same records as its training pairs. Give a folder with a "
            "train and a test file (e.g. train.jsonl and test.jsonl, as on the hub) or the hub id, "
            "or set hh_heldout_pairs=0.")
    skipped: Counter = Counter()
    train = preference_rankings(name_or_path, n_train, seed, "train", "train", skipped=skipped, cache_dir=cache_dir)
    heldout = preference_rankings(name_or_path, n_heldout, seed, "test", "heldout", skipped=skipped, cache_dir=cache_dir)
    return train, heldout, dict(skipped)


def preference_accuracy(score: Callable[[list, list], Sequence[float]],
                        records: Sequence[Mapping[str, Any]]) -> tuple[float | None, int]:
    """(accuracy, pairs): the share of the ranked pairs of `records` that `score(contexts,
    replies)` orders as the rankers did (equal scores count half); (None, 0) without records.
    The reward model's figure on held-out HH-RLHF pairs, where no gold exists."""
    if not records:
        return None, 0
    flat = list(score([r["context"] for r in records for _ in r["replies"]],
                      [x for r in records for x in r["replies"]]))
    grouped, i = [], 0
    for r in records:
        grouped.append(flat[i : i + len(r["replies"])])
        i += len(r["replies"])
    pairs = sum(len(r["replies"]) * (len(r["replies"]) - 1) // 2 for r in records)
    return pairwise_accuracy(grouped, [r["ranking"] for r in records]), pairs


# --------------------------------------------------------------------------------------------
# PPO prompts (stage `ppo`)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTask:
    """A rollout prompt from real data: a conversation ending on a user turn, and nothing else.
    It has the `prompt` a `world.Task` has, but no ideal reply or facts: the gold labeler cannot
    judge a reply to it, only the reward model can score one."""

    messages: tuple[dict[str, str], ...]
    """The conversation so far, ending on the user's turn."""
    source: str = HH_SOURCE
    """Where the prompt came from."""
    family: str = "hh"
    """A family name for tables that group by one; no toy-world family is 'hh'."""

    def __post_init__(self) -> None:
        try:
            clean = validate_conversation(list(self.messages), where=f"{self.source} prompt", ends_with="user")
        except ConversationError as err:
            raise HubDataError(f"{err}; a prompt is a conversation up to the user's last turn") from err
        object.__setattr__(self, "messages", tuple(clean))

    @property
    def prompt(self) -> list[dict[str, str]]:
        """The conversation as a list of message dicts (a copy, safe to extend)."""
        return [dict(m) for m in self.messages]


def hh_prompts(name_or_path: str | os.PathLike, n: int, seed: int = 0, split: str = "train",
               skipped: Counter | None = None, cache_dir: str | os.PathLike | None = None) -> list[PromptTask]:
    """`n` prompts from the HH-RLHF-format `split` of `name_or_path`: each record's conversation
    up to its last user turn, duplicates removed, in an order shuffled by `seed`. When `n` is more
    than there are distinct prompts, they are used again, each pass in a new order."""
    if n == 0:
        return []
    prefs = load_records(name_or_path, "hh", split, "PPOConfig.hh_prompts", skipped, cache_dir)
    unique: dict[str, list[dict[str, str]]] = {}
    for p in prefs:
        unique.setdefault(json.dumps(p["prompt"], ensure_ascii=False), p["prompt"])
    prompts = list(unique.values())
    if not prompts:
        raise HubDataError(f"PPOConfig.hh_prompts = {str(name_or_path)!r}: split {split!r} holds no usable "
                           f"prompt{_counted(skipped or Counter())}; check that it is in HH-RLHF's format")
    rng = random.Random(f"hh.prompts:{seed}")
    out: list[PromptTask] = []
    while len(out) < n:
        order = list(range(len(prompts)))
        rng.shuffle(order)
        out += [PromptTask(tuple(prompts[i])) for i in order[: n - len(out)]]
    return out


def hh_per_batch(batch_size: int, fraction: float) -> int:
    """How many of a batch's `batch_size` prompts are HH prompts: round(fraction * batch_size).
    At least one prompt per batch must stay a toy-world one, the only kind gold can judge."""
    n = round(fraction * batch_size)
    if not 0 <= n < batch_size:
        raise ValueError(f"hh_prompt_fraction = {fraction} of batch_size = {batch_size} gives {n} HH "
                         "prompts per batch, leaving no toy-world prompt to watch gold on; lower it")
    return n


def mix_batches(toy: Sequence[Any], real: Sequence[Any], batch_size: int, n_real: int, seed: int = 0) -> list[Any]:
    """Consecutive batches of `batch_size`, each with `batch_size - n_real` tasks of `toy` and
    `n_real` of `real`, taken in order and shuffled within the batch (by `seed`; with `n_real`
    0, `toy` as it is)."""
    n_toy = batch_size - n_real
    if n_toy <= 0 or n_real < 0:
        raise ValueError(f"mix_batches: n_real = {n_real} must be in [0, batch_size = {batch_size})")
    blocks = len(toy) // n_toy
    if len(toy) != blocks * n_toy or len(real) != blocks * n_real:
        raise ValueError(f"mix_batches: {len(toy)} toy and {len(real)} real tasks do not fill whole "
                         f"batches of {n_toy} + {n_real}")
    if n_real == 0:  # nothing to mix in: the toy order as it is (so a 0 share is the toy track)
        return list(toy)
    rng = random.Random(f"hh.batches:{seed}")
    out: list[Any] = []
    for b in range(blocks):
        batch = [*toy[b * n_toy : (b + 1) * n_toy], *real[b * n_real : (b + 1) * n_real]]
        rng.shuffle(batch)
        out += batch
    return out


def training_prompts(cfg, processes: int, prompt_seed: int,
                     cache_dir: str | os.PathLike | None = None) -> list[Any]:
    """PPO's rollout prompts on the 'hh' track: `cfg.steps * processes` batches of
    `cfg.batch_size`, each holding `hh_per_batch` HH prompts (`PromptTask`) among toy-world
    training tasks (`world.Task`), all seeded by `prompt_seed`."""
    blocks = cfg.steps * processes
    n_real = hh_per_batch(cfg.batch_size, cfg.hh_prompt_fraction)
    toy = World(cfg.seed).tasks("train", blocks * (cfg.batch_size - n_real), seed=prompt_seed)
    real = hh_prompts(cfg.hh_prompts, blocks * n_real, seed=prompt_seed, cache_dir=cache_dir)
    return mix_batches(toy, real, cfg.batch_size, n_real, seed=prompt_seed)
