"""The tokenizer and the base model: trained here on `cpu`, loaded from the hub on `t4`/`a100`.

What this simplifies relative to InstructGPT/ChatGPT: their base was GPT-3.5, a decoder with
billions of parameters pretrained on hundreds of billions of tokens. Ours (cpu track) is a
Llama-style decoder of about 2M parameters with a 1,024-token byte-level BPE vocabulary, trained
in notebook 01 on the toy world's corpus. The chat format is the same idea as ChatML: role headers
and an end-of-turn token, which doubles as EOS so that sampling stops at the end of a reply.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from rlhf_course.config import BaseConfig

PAD = "<|pad|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SYSTEM = "<|system|>"
END = "<|end|>"
"""End of a turn, and EOS: the model learns to emit it when its reply is done."""
SPECIAL_TOKENS = [PAD, USER, ASSISTANT, SYSTEM, END]
"""Our special tokens, in id order (PAD = 0)."""

# One turn is `<|role|>\n{content}<|end|>\n`. The `{% generation %}` block marks what the assistant
# wrote (its content and its end token, but not the header, which the prompt supplies), so that
# `return_assistant_tokens_mask=True` and TRL's `assistant_only_loss` train on replies only.
# Newlines are string literals so that Jinja's whitespace trimming cannot eat them.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\n' }}"
    "{%- generation -%}{{ message['content'] + '<|end|>' }}{%- endgeneration -%}"
    "{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)

# The same markers in ChatML, for hub tokenizers that already have <|im_start|>/<|im_end|>
# (SmolLM2, Qwen2.5): a base model's own template, if any, lacks the generation markers.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\n' }}"
    "{%- generation -%}{{ message['content'] + '<|im_end|>' }}{%- endgeneration -%}"
    "{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def train_tokenizer(
    texts: list[str], vocab_size: int, model_max_length: int = 384
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it for transformers.

    Byte level (no prefix space, no normalizer) makes `decode(encode(text)) == text` for any
    unicode string, so no character is ever unknown. `vocab_size` counts the special tokens,
    which get ids 0-4 (`<|pad|>` = 0). The result has `pad_token`, `eos_token = "<|end|>"`,
    `model_max_length` and the chat template `CHAT_TEMPLATE`.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        # All 256 bytes up front: any text is encodable even if a byte never occurs in `texts`.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=END,
        extra_special_tokens=[USER, ASSISTANT, SYSTEM],
        model_max_length=model_max_length,
        chat_template=CHAT_TEMPLATE,
        # The default cleanup would turn "a ." into "a." and break the exact round trip.
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )


def build_model(cfg: BaseConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A freshly initialised Llama-style decoder sized by `cfg` (seeded by `cfg.seed`).

    RMSNorm, rotary positions, SwiGLU MLP, SDPA attention, and input/output embeddings tied
    (at this size the embedding matrix is a large share of all parameters).
    """
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"BaseConfig: d_model={cfg.d_model} is not divisible by n_heads={cfg.n_heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_seq_len,
        rope_theta=10_000.0,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        attn_implementation="sdpa",
    )
    # fork_rng: seeding the init must not change the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def count_params(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def save_base(path: str | os.PathLike, model: PreTrainedModel, tokenizer) -> Path:
    """Save `model` and `tokenizer` to the folder `path` (safetensors); returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_base(
    profile_or_cfg: str | BaseConfig, path: str | os.PathLike | None = None, device: str | None = None
) -> tuple[PreTrainedTokenizerFast, PreTrainedModel]:
    """Load the base model of a profile: returns `(tokenizer, model)`, the model in eval mode.

    On `cpu`, `path` is a run's base folder written by `save_base` (the base stage, notebook 01).
    On `t4`/`a100`, `cfg.hub_model` (a hub id or a local folder) is loaded in `cfg.dtype`, and
    given a chat template with generation markers and a pad token if it lacks them; `path` is
    then unused. `device` defaults to CUDA on GPU profiles when available, else CPU.
    """
    cfg = BaseConfig.preset(profile_or_cfg) if isinstance(profile_or_cfg, str) else profile_or_cfg
    if cfg.profile == "cpu":
        if path is None:
            raise ValueError(
                "load_base: the cpu profile needs `path`, a run's base folder written by the base "
                "stage (notebook 01, or `save_base(path, model, tokenizer)`)"
            )
        source = str(path)
        what = "a base folder written by the base stage (notebook 01, or `save_base`)"
    else:
        if not cfg.hub_model:
            raise ValueError(f"load_base: BaseConfig.hub_model is empty for profile {cfg.profile!r}")
        source = cfg.hub_model
        what = f"a hub model (BaseConfig.hub_model for profile {cfg.profile!r})"
    if device is None:
        device = "cuda" if cfg.profile != "cpu" and torch.cuda.is_available() else "cpu"
    local = cfg.profile == "cpu" or _looks_local(source)
    tokenizer, model = _load_pretrained(source, local, what, cfg.dtype, trusts_remote_code(cfg))
    return tokenizer, model.to(device).eval()


def trusts_remote_code(cfg: BaseConfig) -> bool:
    """Whether the hub model's own code may run: only when `cfg.trust_remote_code` names exactly
    `cfg.hub_model`. A name that differs is an error, so trust never passes to another model."""
    named = cfg.trust_remote_code.strip()
    if not named:
        return False
    if named != cfg.hub_model:
        raise ValueError(
            f"BaseConfig.trust_remote_code={named!r} names another model than hub_model="
            f"{cfg.hub_model!r}; opting in to run a model's code is per model: set it to the "
            "model you read and trust, or to '' to load safetensors weights only")
    return True


def trainable(model: PreTrainedModel, lora: bool) -> PreTrainedModel:
    """Ready `model` for training: fully fine-tuned weights become fp32 master weights (fp16 or
    bf16 autocast runs the maths; an Adam update of 1e-6 vanishes in a half-precision weight, and
    fp16 loss scaling refuses fp16 parameters); with LoRA the frozen base keeps its half precision
    and peft keeps the adapters in fp32."""
    if lora or not model.dtype.is_floating_point or model.dtype == torch.float32:
        return model
    return model.float()


def load_checkpoint(path: str | os.PathLike, profile: str = "cpu", device: str | None = None):
    """Load a model a stage saved in a run folder (e.g. RUN_DIR/sft/model): `(tokenizer, model)`,
    in eval mode, in the profile's dtype, on CUDA for GPU profiles when available. Unlike
    `load_base`, always reads the local folder, whatever the profile."""
    cfg = BaseConfig.preset(profile)
    if device is None:
        device = "cuda" if profile != "cpu" and torch.cuda.is_available() else "cpu"
    tokenizer, model = _load_pretrained(str(path), True, "a model folder saved by a stage", cfg.dtype, False)
    return tokenizer, model.to(device).eval()


def with_lora(model, cfg, task_type: str, adapter=None):
    """`model` under peft LoRA adapters on every linear layer (rank `cfg.lora_r`); a sequence
    classifier's scalar head (`score`) trains in full, as it starts from scratch or from the RM.
    `adapter`, a folder a peft model was saved to, resumes those adapters instead of new ones.
    The frozen base keeps its dtype; the adapters and the head are fp32 master weights."""
    from peft import (  # peft takes a second to import: only for LoRA
        LoraConfig,
        PeftModel,
        get_peft_model,
    )

    extra = {"modules_to_save": ["score"]} if task_type == "SEQ_CLS" else {}
    if adapter is not None:
        wrapped = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    else:
        wrapped = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                   target_modules="all-linear", task_type=task_type, **extra))
    for p in wrapped.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return wrapped


def _looks_local(source: str) -> bool:
    """A folder, or a path that cannot be a hub id ("org/name" or "name")."""
    return os.path.isdir(source) or source.startswith((".", "/", "~")) or source.count("/") > 1


def _load_pretrained(source: str, local: bool, what: str, dtype: str, trust_remote_code: bool):
    """from_pretrained for both tracks, with errors that name the folder and what makes it."""
    if local:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"load_base: folder {folder} does not exist; expected {what}")
        missing = [] if (folder / "config.json").is_file() else ["config.json"]
        # tokenizer.json (ours, most hub models), or the files a slow tokenizer is built from
        if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            missing.append("tokenizer.json")
        if not any(folder.glob("*.safetensors")):
            missing.append("*.safetensors")
        if missing:
            raise FileNotFoundError(
                f"load_base: folder {folder} lacks {', '.join(missing)}; expected {what}"
            )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=getattr(torch, dtype),  # transformers 5 renamed `torch_dtype` to `dtype`
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
    except Exception as err:  # corrupt json/weights, or no network for a hub id
        hint = "" if local else " (no network? point hub_model at a local folder)"
        raise OSError(f"load_base: could not load {source}, {what}{hint}: {err}") from err
    _ensure_chat_format(tokenizer, model)
    return tokenizer, model


def _ensure_chat_format(tokenizer, model: PreTrainedModel) -> None:
    """Give a hub tokenizer what our stages rely on, in place (a no-op for ours).

    1. a chat template with `{% generation %}` markers (TRL's assistant-only loss needs them);
    2. EOS = the end-of-turn token, so sampling stops at the end of a reply;
    3. a pad token distinct from EOS, so padding is never mistaken for a learned end of turn.
    """
    template = tokenizer.chat_template
    if not isinstance(template, str) or not _GENERATION_MARKER.search(template):
        vocab = tokenizer.get_vocab()
        if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
            tokenizer.chat_template, tokenizer.eos_token = CHATML_TEMPLATE, "<|im_end|>"
        else:
            # A base model's existing template (if any) is only a convention it was not trained
            # on; SFT teaches ours, so it is replaced rather than patched.
            tokenizer.add_special_tokens({"extra_special_tokens": [USER, ASSISTANT, SYSTEM, END]})
            tokenizer.chat_template, tokenizer.eos_token = CHAT_TEMPLATE, END
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD})
    # Many hub models pad their embedding matrix, so new tokens may fit without resizing. New
    # rows start at the mean embedding (HF's default), so they do not dominate the logits.
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    tokenizer.padding_side = "left"
    for conf in (model.config, model.generation_config):
        conf.pad_token_id = tokenizer.pad_token_id
        conf.eos_token_id = tokenizer.eos_token_id

