#!/usr/bin/env python3
"""Streams one chat completion from an OpenAI-compatible server (vLLM,
llama.cpp's llama-server, Triage's simulator) and prints it as it arrives,
then the usage and timings. Standard library only."""

import argparse
import json
import sys
import time
import urllib.request


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8101")
    ap.add_argument("--model", required=True, help="served model name")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole answer")
    ap.add_argument("prompt")
    args = ap.parse_args()

    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": args.prompt}],
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    req = urllib.request.Request(
        args.url.rstrip("/") + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    start = time.monotonic()
    first = None
    usage = None
    finish = None
    with urllib.request.urlopen(req, timeout=args.timeout) as resp:
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    if first is None:
                        first = time.monotonic()
                    sys.stdout.write(text)
                    sys.stdout.flush()
                finish = choice.get("finish_reason") or finish
    total = time.monotonic() - start
    print()
    ttft = f"{(first - start) * 1000:.0f} ms" if first else "no tokens"
    if usage:
        gen = usage.get("completion_tokens", 0)
        rate = gen / (total - (first - start)) if first and total > first - start else 0.0
        print(
            f"[{args.model}: finish={finish}, prompt_tokens={usage.get('prompt_tokens')}, "
            f"completion_tokens={gen}, time to first token {ttft}, total {total * 1000:.0f} ms, "
            f"{rate:.0f} tokens/s]"
        )
    else:
        print(f"[{args.model}: finish={finish}, no usage chunk, time to first token {ttft}, total {total * 1000:.0f} ms]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
