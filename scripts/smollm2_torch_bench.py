"""PyTorch's side of `rlhf bench` at SmolLM2-135M's shape, on the CPU, random weights: a training
step (forward + backward + AdamW, fp32) on 8 x 256 tokens, and `generate` at batch 16 (prompt 32,
exactly 64 new tokens, sampling, KV cache). Prints medians and every repeat.

Run it with the TRL bench's environment (`../shared/peers/setup_venv.sh`), nothing else on the
machine (PyTorch's OpenMP threads spin and collapse under contention):

    $HOME/trl-bench/.venv/bin/python scripts/smollm2_torch_bench.py [--repeats 5] [--only train|generate]

and compare with
    rlhf bench --layers 30 --hidden 576 --heads 9 --kv-heads 3 --intermediate 1536 \\
        --vocab 49152 --batch 8 --seq-len 256 --only train
    rlhf bench --layers 30 --hidden 576 --heads 9 --kv-heads 3 --intermediate 1536 \\
        --vocab 49152 --only sample
"""
import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# SmolLM2-135M-Instruct's config.json, less what only matters for loading.
SMOLLM2 = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["train", "generate"], help="run one of the two measurements")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2, attn_implementation="sdpa")).float()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")

    if a.only != "generate":
        train(model, a.repeats)
    if a.only != "train":
        sample(model, a.repeats)


def train(model, repeats):
    """Training: 8 x 256, next-token loss, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, SMOLLM2["vocab_size"], (8, 256))
    model.train()

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()

    train_step()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        train_step()
        times.append(time.perf_counter() - t)
    rates = [ids.numel() / s for s in times]
    print(f"train   8 x 256: median {statistics.median(rates):,.0f} tok/s  ({', '.join(f'{r:,.0f}' for r in rates)})")


def sample(model, repeats):
    """Sampling: batch 16, prompt 32, exactly 64 new tokens."""
    model.eval()
    prompt = torch.randint(0, SMOLLM2["vocab_size"], (16, 32))

    def generate():
        with torch.no_grad():
            return model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=64,
                min_new_tokens=64,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                pad_token_id=0,
            )

    generate()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = generate()
        times.append(time.perf_counter() - t)
        assert out.shape == (16, 96), out.shape
    rates = [16 * 64 / s for s in times]
    print(f"generate b16: median {statistics.median(rates):,.0f} new tok/s  ({', '.join(f'{r:,.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
