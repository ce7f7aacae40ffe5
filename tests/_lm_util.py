"""A tiny word-level tokenizer and tiny causal-LM configs, shared by the LM and features tests."""

import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

WORDS = ("the a cat dog sat ran on under mat log and then it was big small red blue "
         "house tree bird sang loud soft day night").split()  # fmt: skip


def _tokenizer():
    vocab = {w: i for i, w in enumerate(["[UNK]", "<s>", "</s>", *WORDS])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="[UNK]"
    )


def _configs(vocab):
    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2)
    cfgs = {
        "gpt2": ("GPT2LMHeadModel", transformers.GPT2Config(n_layer=3, n_embd=32, n_head=2, n_positions=64, **common)),
        "neox": ("GPTNeoXForCausalLM", transformers.GPTNeoXConfig(
            num_hidden_layers=3, hidden_size=32, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, **common)),
        "llama": ("LlamaForCausalLM", transformers.LlamaConfig(
            num_hidden_layers=3, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=64, max_position_embeddings=64, **common)),
    }  # fmt: skip
    if hasattr(transformers, "Gemma2Config"):
        cfgs["gemma2"] = ("Gemma2ForCausalLM", transformers.Gemma2Config(
            num_hidden_layers=3, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
            intermediate_size=64, max_position_embeddings=64, **common))  # fmt: skip
    return cfgs
