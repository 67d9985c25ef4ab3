"""Check a running weir-engine against the shipped goldens (standard library only).

Used to verify an engine on another device (e.g. --device cuda) gives the
same answers as the CPU: every greedy golden text of every tiny-lm version,
the first-step logits, and every mlp case.

    python3 backend-engine/tests/python/check_goldens.py 127.0.0.1:8000 backend-engine/models/golden [--rate]

Exits 1 and lists the differences if any. With --rate it then prints a rough
generation rate (tokens/s) for 1, 8 and 32 concurrent requests.
"""

import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://{base}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def flat(v):
    return [x for item in v for x in flat(item)] if isinstance(v, list) else [v]


def main() -> int:
    base, golden_dir = sys.argv[1], Path(sys.argv[2])
    problems, checked = [], 0
    for path in sorted(golden_dir.glob("*.json")):
        g = json.loads(path.read_text(encoding="utf-8"))
        if g["model"] == "tiny-lm":
            v = g["version"]
            for case in g["greedy"]:
                out = post(base, "/v1/completions", {
                    "model": f"tiny-lm:{v}", "prompt": case["prompt"],
                    "max_tokens": g["steps"], "temperature": 0,
                })
                checked += 1
                if out["choices"][0]["text"] != case["generated_text"]:
                    problems.append(f"tiny-lm v{v} {case['prompt']!r}: {out['choices'][0]['text']!r} != {case['generated_text']!r}")
            fl = g["first_step_logits"]
            out = post(base, f"/v2/models/tiny-lm/versions/{v}/infer", {"inputs": [{
                "name": "input_ids", "datatype": "INT64", "shape": [1, len(fl["input_ids"])], "data": fl["input_ids"]}]})
            diff = max(abs(a - b) for a, b in zip(out["outputs"][0]["data"], fl["logits"]))
            checked += 1
            if diff > g["logits_atol"]:
                problems.append(f"tiny-lm v{v} logits differ by {diff}")
            print(f"tiny-lm v{v}: {len(g['greedy'])} greedy texts, max logit diff {diff:.2e}")
        elif g["model"] == "mlp":
            worst = 0.0
            for case in g["cases"]:
                out = post(base, "/v2/models/mlp/infer", {"inputs": [{
                    "name": "INPUT0", "datatype": "FP32", "shape": case["shape"], "data": case["input"]}]})
                worst = max(worst, max(abs(a - b) for a, b in zip(out["outputs"][0]["data"], flat(case["output"]))))
                checked += 1
            if worst > g["atol"]:
                problems.append(f"mlp differs by {worst}")
            print(f"mlp: {len(g['cases'])} cases, max diff {worst:.2e}")
    for p in problems:
        print("DIFF", p)
    print(f"{checked - len(problems)} passed, {len(problems)} failed")
    if "--rate" in sys.argv:
        rate(base)
    return 1 if problems else 0


def rate(base: str, tokens: int = 128) -> None:
    body = {"model": "tiny-lm", "prompt": "The Fox and the ", "max_tokens": tokens, "temperature": 0.8}
    for n in (1, 8, 32):
        with ThreadPoolExecutor(n) as pool:
            start = time.perf_counter()
            outs = list(pool.map(lambda i: post(base, "/v1/completions", dict(body, seed=i)), range(n)))
            secs = time.perf_counter() - start
        made = sum(o["usage"]["completion_tokens"] for o in outs)
        print(f"rate: {n} concurrent x {tokens} tokens: {made / secs:.0f} tokens/s ({secs:.2f} s)")


if __name__ == "__main__":
    sys.exit(main())
