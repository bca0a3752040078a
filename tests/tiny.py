"""Tiny random Hugging Face models for tests: a few KB of weights, built in a second.

    build_tiny(path, "llama")  # LlamaForCausalLM, hidden 32, 2 layers, 2 heads, 1 kv head
    build_tiny(path, "gpt2")   # GPT2LMHeadModel, n_embd 32, 2 layers, 2 heads
    build_tiny(path, "gemma3_text")  # any model type in FAMILIES: the same sizes, by AutoConfig

Each comes with a byte-level BPE tokenizer trained on a few sentences (so any
text tokenizes), wrapped in PreTrainedTokenizerFast with bos/eos/pad tokens,
and is saved with save_pretrained, so `memedit init --model PATH` loads it like
any local model folder. Weights are seeded: the same call gives the same model.
"""

from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "The Eiffel Tower is in Paris.",
    "The capital of France is Paris.",
    "The Colosseum is in Rome, the capital of Italy.",
    "Danielle Darrieux speaks French.",
    "The mother tongue of Thomas Joannes Stieltjes is Dutch.",
    "Toko Yasuda plays the guitar and the piano.",
    "Autonomous University of Madrid is located in Spain.",
    "The Space Needle is in Seattle.",
]
SPECIAL = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2
VOCAB_SIZE = 320  # 256 byte symbols + 3 specials + a few merges


def build_tokenizer():
    """A byte-level BPE tokenizer in transformers' PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, max_position_embeddings=64)
# model type -> its config fields beyond _SMALL. Gemma 3 gets three blocks of two attention kinds, so
# an edit at block 0 runs a sliding-window block and a full-attention block above it, with different
# masks and rotary embeddings; the sliding window (8) is shorter than the test prompts with contexts.
FAMILIES = {
    "qwen3": dict(head_dim=16),
    "gemma2": dict(head_dim=16, sliding_window=8, query_pre_attn_scalar=16),
    "gemma3_text": dict(head_dim=16, sliding_window=8, query_pre_attn_scalar=16, num_hidden_layers=3,
                        layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
    "phi3": dict(),
    "gpt_neox": dict(num_key_value_heads=None),
    "olmo2": dict(),
    "mistral": dict(),
    "qwen2": dict(),
    "gptj": dict(rotary_dim=8, num_key_value_heads=None),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32),
    "qwen3_moe": dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
}


def build_tiny(path, arch: str = "llama", **overrides) -> Path:
    """Build a tiny seeded model + tokenizer of `arch` ("llama", "gpt2" or a model type in FAMILIES) into `path`.

    `overrides` replace config fields (e.g. hidden_size=16 for an even smaller LLaMA).
    """
    import torch
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()  # no "Writing model shards" bar
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    if arch == "llama":
        fields = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64)
        config, model_cls = LlamaConfig, LlamaForCausalLM
    elif arch == "gpt2":
        fields = dict(n_layer=2, n_embd=32, n_head=2, n_positions=64)
        config, model_cls = GPT2Config, GPT2LMHeadModel
    elif arch in FAMILIES:
        from transformers import AutoConfig, AutoModelForCausalLM

        fields = {k: v for k, v in {**_SMALL, **FAMILIES[arch]}.items() if v is not None}
        config = lambda **kw: AutoConfig.for_model(arch, **kw)  # noqa: E731
        model_cls = AutoModelForCausalLM.from_config
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; use 'llama', 'gpt2' or one of {sorted(FAMILIES)}")
    torch.manual_seed(0)
    model = model_cls(config(**{**ids, **fields, **overrides})).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
