#!/usr/bin/env python3
"""Derive loopgate's model catalog (conf/catalog.json) from LiteLLM's price table.

Usage: python3 conf/derive_catalog.py <model_prices.json> conf/catalog.json

Deterministic: the same input gives the same bytes (sorted entries, fixed field
order, Python's shortest float repr). Standard library only.

What is kept: entries whose mode is chat, embedding or image_generation. Each entry
gets the provider-native model id as `name` (the key without a leading `provider/`
routing prefix, an Azure/Bedrock region segment, or an image quality/size prefix),
per-token prices, context limits and four capability flags. Image-generation
variants priced per quality and size (`low/1024-x-1024/gpt-image-1`) are folded
into one entry per model as `image_prices`. `SUPPLEMENT` adds the few models the
README uses that the source lacks, at the providers' published prices.
"""

import hashlib
import json
import re
import sys

MODES = ("chat", "embedding", "image_generation")

# LiteLLM's size-bucket default prices: not models anyone can call.
SKIP_KEY = re.compile(r"^(together-ai-|fireworks-ai-)")

# Azure deployment types / data zones and AWS regions that prefix a model id.
AZURE_REGIONS = {"eu", "us", "global", "global-standard", "us-gov", "apac"}
AWS_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")

# `[quality/]W-x-H[/N-steps]/model` image variants.
IMAGE_VARIANT = re.compile(
    r"^(?:(?P<q>low|medium|high|standard|hd|auto)/)?(?P<w>\d+|max)-x-(?P<h>\d+|max)/(?:(?:\d+|max)-steps/)?(?P<rest>.+)$"
)

# Long-context tiers: the whole request is billed at the higher price once the
# prompt exceeds the threshold (Gemini, Claude 1M, Grok ...). Lowest tier wins.
TIERS = (128_000, 200_000, 256_000, 272_000)


def strip_provider(key, provider):
    """Remove a leading `provider/` routing prefix from a LiteLLM key."""
    segs = key.split("/", 1)
    if len(segs) == 2:
        head = segs[0]
        if (
            head == provider
            or head.replace("-", "_") == provider
            or provider.startswith(head + "_")
            or provider.startswith(head + "-")
        ):
            return segs[1], True
    return key, False


def split_region(name, provider):
    segs = name.split("/", 1)
    if len(segs) == 2:
        head = segs[0]
        if provider in ("azure", "azure_text") and head in AZURE_REGIONS:
            return segs[1], head
        if provider.startswith("bedrock") and AWS_REGION.match(head):
            return segs[1], head
    return name, None


def num(v):
    """A price or limit as a JSON number, or None when absent / not numeric."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return int(v)
    return v


def per_image_price(v, w, h):
    """Per-image price of a quality/size variant."""
    for f in ("output_cost_per_image", "input_cost_per_image"):
        p = num(v.get(f))
        if p is not None:
            return p
    px = num(v.get("input_cost_per_pixel"))
    if px and w.isdigit() and h.isdigit():
        # LiteLLM's per-pixel figures are the per-image price divided by the pixel count.
        return round(px * int(w) * int(h), 6)
    return None


def base_entry(key, v, provider, name, region):
    e = {"name": name, "provider": provider, "mode": v["mode"], "key": key}
    if region:
        e["region"] = region
    for out, f in (
        ("input", "input_cost_per_token"),
        ("output", "output_cost_per_token"),
        ("cache_read", "cache_read_input_token_cost"),
        ("cache_creation", "cache_creation_input_token_cost"),
    ):
        p = num(v.get(f))
        if p is not None:
            e[out] = p
    for t in TIERS:
        i = num(v.get(f"input_cost_per_token_above_{t // 1000}k_tokens"))
        o = num(v.get(f"output_cost_per_token_above_{t // 1000}k_tokens"))
        if i is not None or o is not None:
            tier = {"above": t}
            if i is not None:
                tier["input"] = i
            if o is not None:
                tier["output"] = o
            c = num(v.get(f"cache_read_input_token_cost_above_{t // 1000}k_tokens"))
            if c is not None:
                tier["cache_read"] = c
            e["long_context"] = tier
            break
    if v["mode"] == "image_generation":
        for f in ("output_cost_per_image", "input_cost_per_image"):
            p = num(v.get(f))
            if p is not None:
                e["per_image"] = p
                break
        p = num(v.get("output_cost_per_image_token"))
        if p is not None:
            e["output_image_token"] = p
    mi = num(v.get("max_input_tokens"))
    mo = num(v.get("max_output_tokens"))
    if mo is None:
        mo = num(v.get("max_tokens"))
    if isinstance(mi, int):
        e["max_input_tokens"] = mi
    if isinstance(mo, int):
        e["max_output_tokens"] = mo
    for out, f in (
        ("vision", "supports_vision"),
        ("tools", "supports_function_calling"),
        ("response_schema", "supports_response_schema"),
        ("reasoning", "supports_reasoning"),
    ):
        if v.get(f) is True:
            e[out] = True
    return e


def fireworks_native(entries):
    """Fireworks' API wants resource names (accounts/fireworks/models/<id>); LiteLLM
    also lists bare aliases. Drop an alias when the resource name is listed too,
    otherwise rename it to the models/ resource name."""
    full = {}
    for (provider, name, _region) in entries:
        if provider.startswith("fireworks_ai") and name.startswith("accounts/"):
            full.setdefault(provider, set()).add(name.rsplit("/", 1)[-1])
    for ident in sorted(entries, key=lambda i: (i[0], i[1], i[2] or "")):
        provider, name, region = ident
        if not provider.startswith("fireworks_ai") or "/" in name:
            continue
        prefixed, e = entries.pop(ident)
        if name in full.get(provider, set()):
            continue
        e["name"] = "accounts/fireworks/models/" + name
        new = (provider, e["name"], region)
        if new not in entries:
            entries[new] = (prefixed, e)


# Models the README's own examples use that the source table lacks, at the providers'
# published list prices (USD; per token, or per image for image models). An entry the
# source does have always wins over this list.
SUPPLEMENT = (
    # https://groq.com/pricing: $0.59 / $0.79 per million tokens.
    {"name": "llama-3.3-70b-versatile", "provider": "groq", "mode": "chat",
     "key": "loopgate-supplement/groq/llama-3.3-70b-versatile",
     "input": 5.9e-07, "output": 7.9e-07, "max_input_tokens": 131072, "max_output_tokens": 32768,
     "tools": True},
    # https://groq.com/pricing: $0.05 / $0.08 per million tokens.
    {"name": "llama-3.1-8b-instant", "provider": "groq", "mode": "chat",
     "key": "loopgate-supplement/groq/llama-3.1-8b-instant",
     "input": 5e-08, "output": 8e-08, "max_input_tokens": 131072, "max_output_tokens": 131072,
     "tools": True},
    # https://openai.com/api/pricing (DALL-E 3): per image by quality and size.
    {"name": "dall-e-3", "provider": "openai", "mode": "image_generation",
     "key": "loopgate-supplement/openai/dall-e-3",
     "image_prices": {"hd/1024x1024": 0.08, "hd/1024x1792": 0.12, "hd/1792x1024": 0.12,
                      "standard/1024x1024": 0.04, "standard/1024x1792": 0.08,
                      "standard/1792x1024": 0.08}},
    # https://openai.com/api/pricing (DALL-E 2): per image by size.
    {"name": "dall-e-2", "provider": "openai", "mode": "image_generation",
     "key": "loopgate-supplement/openai/dall-e-2",
     "image_prices": {"1024x1024": 0.02, "256x256": 0.016, "512x512": 0.018}},
)


def derive(data):
    entries = {}  # (provider, name, region) -> (prefixed, entry)
    variants = {}  # (provider, name, region) -> {label: price}, first variant key
    for key in sorted(data):
        v = data[key]
        if not isinstance(v, dict) or v.get("mode") not in MODES:
            continue
        provider = v.get("litellm_provider")
        if not isinstance(provider, str) or not provider or SKIP_KEY.match(key) or "*" in key:
            continue
        if "commitment" in key:  # provisioned throughput: priced per hour, not per token
            continue
        m = IMAGE_VARIANT.match(key) if v["mode"] == "image_generation" else None
        if m:
            name, _ = strip_provider(m.group("rest"), provider)
            name, region = split_region(name, provider)
            price = per_image_price(v, m.group("w"), m.group("h"))
            if price is None:
                continue
            label = f"{m.group('w')}x{m.group('h')}"
            if m.group("q"):
                label = f"{m.group('q')}/{label}"
            slot = variants.setdefault((provider, name, region), [{}, key])
            slot[0].setdefault(label, price)
            continue
        # Azure image variants carry the prefix first: azure/low/1024-x-1024/gpt-image-1.
        name, prefixed = strip_provider(key, provider)
        if v["mode"] == "image_generation":
            m = IMAGE_VARIANT.match(name)
            if m:
                vname, region = split_region(m.group("rest"), provider)
                price = per_image_price(v, m.group("w"), m.group("h"))
                if price is None:
                    continue
                label = f"{m.group('w')}x{m.group('h')}"
                if m.group("q"):
                    label = f"{m.group('q')}/{label}"
                slot = variants.setdefault((provider, vname, region), [{}, key])
                slot[0].setdefault(label, price)
                continue
        name, region = split_region(name, provider)
        ident = (provider, name, region)
        # Same model listed with and without the provider prefix: LiteLLM looks up
        # `provider/model` first, so the prefixed key wins.
        prev = entries.get(ident)
        if prev is not None and (prev[0] or not prefixed):
            continue
        entries[ident] = (prefixed, base_entry(key, v, provider, name, region))

    for ident, (table, first_key) in variants.items():
        if ident not in entries:
            provider, name, region = ident
            e = {"name": name, "provider": provider, "mode": "image_generation", "key": first_key}
            if region:
                e["region"] = region
            entries[ident] = (False, e)
        entries[ident][1]["image_prices"] = {k: table[k] for k in sorted(table)}

    fireworks_native(entries)
    for e in SUPPLEMENT:
        entries.setdefault((e["provider"], e["name"], None), (False, dict(e)))
    out = [e for _, e in entries.values()]
    out.sort(key=lambda e: (e["provider"], e["name"], e.get("region") or "", e["key"]))
    return out


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: derive_catalog.py <model_prices.json> <catalog.json>\n")
        return 2
    src, dst = argv[1], argv[2]
    with open(src, "rb") as f:
        raw = f.read()
    data = json.loads(raw)
    entries = derive(data)
    header = {
        "source": "LiteLLM model_prices_and_context_window.json (model_prices.json)",
        "source_url": "https://github.com/BerriAI/litellm/blob/main/model_prices_and_context_window.json",
        "licence": "MIT, Copyright (c) 2023 Berri AI (LiteLLM)",
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "derived_by": "python3 conf/derive_catalog.py <model_prices.json> conf/catalog.json",
        "units": "prices in USD per token (per_image / image_prices: USD per image)",
        "count": len(entries),
    }
    lines = ["{"]
    for k, val in header.items():
        lines.append(f"{json.dumps(k)}:{json.dumps(val, ensure_ascii=False)},")
    lines.append('"entries":[')
    body = [json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in entries]
    lines.append(",\n".join(body))
    lines.append("]}")
    text = "\n".join(lines) + "\n"
    with open(dst, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
