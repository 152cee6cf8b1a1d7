"""Times transformers `generate()` on one configuration; prints one JSON line.

Run by bench/compare.py inside the throw-away virtualenv (torch + transformers).
"""
import argparse
import json
import resource
import statistics
import time

import torch
from transformers import AutoTokenizer, EncoderDecoderModel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--beams", type=int, required=True)
    p.add_argument("--new-tokens", type=int, required=True)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = EncoderDecoderModel.from_pretrained(a.model).eval()
    enc = tok([a.text] * a.batch, return_tensors="pt", truncation=True, max_length=512)
    kwargs = dict(
        num_beams=a.beams,
        do_sample=False,
        min_new_tokens=a.new_tokens,
        max_new_tokens=a.new_tokens,
        early_stopping=True,
    )
    times = []
    with torch.inference_mode():
        for _ in range(a.repeats):
            start = time.perf_counter()
            out = model.generate(**enc, **kwargs)
            times.append(time.perf_counter() - start)
    print(json.dumps({
        "input_tokens": int(enc["input_ids"].shape[1]),
        "output_tokens": int(out.shape[1]) - 1,
        "seconds": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
