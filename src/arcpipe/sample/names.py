"""Made-up names and Freebase-style MIDs for the generated identities."""
from __future__ import annotations

import numpy as np

FIRST = (
    "Ada Alan Alma Amos Anna Arlo Bea Boris Carla Cyrus Dara Dmitri Edie Elio Esme Felix Flora Gideon "
    "Greta Hugo Ines Ivo Jana Jonas Kira Lars Lena Milo Nadia Nils Olga Otto Petra Quentin Rosa Rufus "
    "Sana Tomas Uma Vera Wim Yara Zeno"
).split()
LAST = (
    "Abbot Baines Carvalho Dorsey Eklund Falk Garrido Hale Ibarra Jansen Kowal Lindqvist Moreau Novak "
    "Okafor Pereira Quist Rahman Sato Tamm Ulloa Varga Weller Xu Yilmaz Zander Brandt Castell Delacroix "
    "Esposito Fischer Grant Holm Ivers Janssen Kato Lowe Marsh Nyberg Orlov"
).split()

_MID_CHARS = np.array(list("0123456789bcdfghjklmnpqrstvwxyz_"))


def person_names(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct 'First_Last' names (a roman numeral suffix once the pairs run out)."""
    combos = [f"{f}_{l}" for f in FIRST for l in LAST]
    order = rng.permutation(len(combos))
    out: list[str] = []
    round_ = 0
    while len(out) < n:
        for i in order:
            if len(out) == n:
                break
            out.append(combos[i] if round_ == 0 else f"{combos[i]}_{'I' * (round_ + 1)}")
        round_ += 1
    return out


def freebase_mids(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct MIDs shaped like Freebase's ('m.0' then 4 to 6 characters)."""
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        k = int(rng.integers(4, 7))
        mid = "m.0" + "".join(rng.choice(_MID_CHARS, size=k).tolist())
        if mid not in seen:
            seen.add(mid)
            out.append(mid)
    return out
