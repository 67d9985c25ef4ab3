"""Check a running weir-engine against the shipped goldens (standard library only).

Used to verify an engine on another device (e.g. --device cuda) gives the
same answers as the CPU: every greedy golden text of every tiny-lm version,
the first-step logits, and every mlp case; for the real models
(scripts/setup-models.sh), when the engine serves them: the greedy
continuation and the chat answer of each smollm2-135m-instruct version
(token for token) and the all-minilm-l6-v2 embeddings (first 8 values,
within the golden's atol) and pair cosines. Goldens of models the engine
does not serve are skipped and listed.

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
    with urllib.request.urlopen(f"http://{base}/v1/models", timeout=30) as r:
        served = {m["id"] for m in json.load(r)["data"]}
    for path in sorted(golden_dir.glob("*.json")):
        g = json.loads(path.read_text(encoding="utf-8"))
        name = g["model"] if "version" not in g else f"{g['model']}:{g['version']}"
        if name not in served:
            print(f"{path.name}: skipped ({name} not served)")
            continue
        if "greedy" in g and "chat" in g:
            checked += real_lm(base, g, problems)
        elif "sentences" in g:
            checked += real_embedding(base, g, problems)
        elif g["model"] == "tiny-lm":
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


def real_lm(base: str, g: dict, problems: list) -> int:
    """A causal-lm golden: the greedy continuation and the chat answer."""
    model = f"{g['model']}:{g['version']}"
    case = g["greedy"]
    out = post(base, "/v1/completions", {
        "model": model, "prompt": case["prompt"], "max_tokens": case["max_new_tokens"],
        "temperature": 0, "ignore_eos": True,
    })
    text = out["choices"][0]["text"]
    if text != case["generated_text"]:
        problems.append(f"{model} greedy: {text!r} != {case['generated_text']!r}")
    chat = g["chat"]
    body = {"model": model, "messages": chat["messages"], "temperature": 0}
    if "max_new_tokens" in chat:
        body["max_tokens"] = chat["max_new_tokens"]
    answer = post(base, "/v1/chat/completions", body)["choices"][0]["message"]["content"]
    want = chat.get("answer_text")
    if want is not None and answer != want:
        problems.append(f"{model} chat: {answer!r} != {want!r}")
    print(f"{model}: greedy and chat checked")
    return 2


def real_embedding(base: str, g: dict, problems: list) -> int:
    """An embedding golden: leading values of each sentence, pair cosines."""
    model = f"{g['model']}:{g['version']}"
    texts = [s["text"] for s in g["sentences"]]
    data = post(base, "/v1/embeddings", {"model": model, "input": texts})["data"]
    vectors = [d["embedding"] for d in sorted(data, key=lambda d: d["index"])]
    worst = max(abs(a - b) for s, v in zip(g["sentences"], vectors) for a, b in zip(s["first8"], v))
    if worst > g["atol"]:
        problems.append(f"{model}: embeddings differ by {worst}")
    for p in g["pairs"]:
        a, b = vectors[p["a"]], vectors[p["b"]]
        cos = sum(x * y for x, y in zip(a, b))
        if abs(cos - p["cosine"]) > 1e-3:
            problems.append(f"{model}: cosine {p['a']},{p['b']} {cos:.6f} != {p['cosine']}")
    print(f"{model}: {len(texts)} sentences, max diff {worst:.2e}")
    return len(texts)


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
