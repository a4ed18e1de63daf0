"""The tiny policy the tests share: a 2-layer Qwen2 over testbed.py's character tokenizer of digits,
'+' and '=' (<pad> 0, <eos> 1; 15 tokens), random weights from seed 0. Built in code: no download."""
import torch

from testbed import char_tokenizer


def tiny_policy(max_positions: int = 32):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = char_tokenizer("0123456789+=")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=max_positions, pad_token_id=0, eos_token_id=1))
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    return model, tokenizer
