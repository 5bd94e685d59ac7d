"""Per-layer placement of a technique as a short pattern string, parsed once and checked against the layer count.

    "none" | ""       no layer
    "all"             every layer
    "last:4"          the last 4 layers          "first:2"   the first 2 layers
    "from:8"          layers 8 .. L-1            "3-5"       layers 3, 4, 5 (inclusive)
    "0,2,5"           exactly these layers       "3-5,9"     ranges and indices mixed
"""

from __future__ import annotations


def parse_layers(pattern: str, num_layers: int, *, field: str = "pattern") -> tuple[bool, ...]:
    """Return a tuple of `num_layers` booleans; raise ValueError naming `field` on a bad pattern."""
    p = (pattern or "").strip().lower()
    if p in ("", "none"):
        return (False,) * num_layers
    if p == "all":
        return (True,) * num_layers
    chosen: set[int] = set()
    try:
        if ":" in p:
            kind, n = p.split(":", 1)
            k = int(n)
            if k < 0:
                raise ValueError
            if kind == "last":
                chosen = set(range(max(num_layers - k, 0), num_layers)) if k <= num_layers else _too_big(field, p, num_layers)
            elif kind == "first":
                chosen = set(range(k)) if k <= num_layers else _too_big(field, p, num_layers)
            elif kind == "from":
                chosen = set(range(k, num_layers)) if k < num_layers else _too_big(field, p, num_layers)
            else:
                raise ValueError
        else:
            for part in p.split(","):
                part = part.strip()
                if "-" in part:
                    a, b = (int(v) for v in part.split("-", 1))
                    if a > b:
                        raise ValueError
                    chosen.update(range(a, b + 1))
                else:
                    chosen.add(int(part))
    except ValueError:
        raise ValueError(f"{field}={pattern!r} is not a layer pattern (all, none, last:N, first:N, from:N, 3-5, 0,2,5)") from None
    bad = sorted(i for i in chosen if not 0 <= i < num_layers)
    if bad:
        raise ValueError(f"{field}={pattern!r} names layer(s) {bad} but the model has {num_layers} layers (0..{num_layers - 1})")
    return tuple(i in chosen for i in range(num_layers))


def _too_big(field: str, pattern: str, num_layers: int):
    raise ValueError(f"{field}={pattern!r} asks for more layers than the model's {num_layers}")
