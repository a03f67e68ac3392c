"""What several ``creme`` commands share: the service options, the layer-band argument and how they print
answers and metrics."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from creme.client import Client
from service.plots import SET_NAMES

DEFAULT_URL = "http://127.0.0.1:8000"


def service_options() -> argparse.ArgumentParser:
    """The options of every command that talks to a running service (a parent parser)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--url", help=f"the service (default: $CREME_URL, else {DEFAULT_URL})")
    options.add_argument("--api-key", help="an API key, creme_… (default: $CREME_API_KEY)")
    options.add_argument("--model", help="the base model (needed once the service serves several)")
    return options


def service_client(args: argparse.Namespace, model: str | None = None) -> Client:
    """A client of the service the options name, for ``--model`` (else ``model``)."""
    url = args.url or os.environ.get("CREME_URL") or DEFAULT_URL
    api_key = args.api_key or os.environ.get("CREME_API_KEY") or None
    return Client(url, api_key=api_key, model=args.model or model)


_SET_COLUMNS = (
    ("n", "n", "{:d}"),
    ("win pre", "win_rate_pre", "{:.1%}"),
    ("win post", "win_rate_post", "{:.1%}"),
    ("greedy pre", "greedy_acc_pre", "{:.1%}"),
    ("greedy post", "greedy_acc_post", "{:.1%}"),
    ("p rose", "share_increased", "{:.1%}"),
    ("mean rel Δp", "mean_rel_change", "{:+.2f}"),
    ("leak rel Δ", "leakage_mean_rel_change", "{:+.2f}"),
)


def parse_layers(text: str) -> list[int]:
    """'10-20' → 10..20; '3,5,7' → [3, 5, 7]; mixed '3,10-12' works too."""
    layers: set[int] = set()
    try:
        for part in text.split(","):
            if "-" in part:
                first, last = (int(x) for x in part.split("-", 1))
                if first > last:
                    raise ValueError
                layers.update(range(first, last + 1))
            elif part.strip():
                layers.add(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must look like '10-20' or '3,5,7', not {text!r}") from None
    if not layers:
        raise argparse.ArgumentTypeError("no layers given")
    return sorted(layers)


def fmt_p(p: float) -> str:
    """A probability in four decimals, or in scientific notation when it is that small."""
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def first_line(text: str) -> str:
    """The first line of a model's continuation, stripped ('' for none)."""
    return text.strip().splitlines()[0] if text.strip() else ""


def set_table(metrics: Mapping[str, Any]) -> list[str]:
    """Lines of a table of the query sets in ``metrics`` (a set's metrics by its name): win rate, accuracy, Δp."""
    lines = [f"{'set':<15}" + "".join(f"{title:>12}" for title, _, _ in _SET_COLUMNS)]
    for name in SET_NAMES:
        values = metrics.get(name)
        if not values:
            continue
        cells = [fmt.format(values[key]) if values.get(key) is not None else "-" for _, key, fmt in _SET_COLUMNS]
        lines.append(f"{name:<15}" + "".join(f"{cell:>12}" for cell in cells))
    return lines
