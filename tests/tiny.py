"""The tiny policy the tests share: a 2-layer Qwen2 over a character tokenizer of digits, '+' and
'=' (<pad> 0, <eos> 1), random weights from seed 0. Built in code: no download."""
import torch


def tiny_policy(max_positions: int = 32):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<unk>", *"0123456789+="])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=max_positions, pad_token_id=0, eos_token_id=1))
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    return model, tokenizer
