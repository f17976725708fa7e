"""A synthetic MegaFace test pack of aligned *images* (not features), in insightface's layout.

``generate_images(out, ...)`` writes::

    facescrub_images/<Name>/<Name>_<k>.png          probe images (n_identities x per_identity)
    megaface_images/<a>/<b>@N00/<photo>_<face>.jpg  distractor images (one identity each)
    facescrub_features_list.json                    {"path": [...], "id": [...]}; paths relative to facescrub_images/
    lists/megaface_features_list.json_<size>_1      {"path": [...]}; nested: size n = the first n distractors
    facescrub_noises.txt, megaface_noises.txt       the planted noise (plus one entry that matches nothing)
    meta.json

Faces come from ``render(identity, image, seed=..., size=...) -> uint8 (size, size, 3)``, by default
:func:`megabench.data.synthetic_faces.render_face`. Identities ``first_identity + c`` (c < n_identities)
are the probes; distractor i is identity ``first_identity + n_identities + i``. The default
``first_identity`` (100,000) keeps them apart from the identities a ``synth faces`` training set uses
(0 .. N-1), so a model trained there is tested on people it never saw.

Planted noise, as in the real sets: *mislabelled probes* (the file sits under identity c but shows
identity c+1) and *near-duplicate distractors* (a distractor
that is another photo of a probe identity). The noise lists name exactly those files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from megabench.data.synthetic_megaface import STANDARD_SIZES, distractor_path

Render = Callable[..., np.ndarray]


def _save(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    from megabench.fileio import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    with atomic_path(path, suffix=path.suffix) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def generate_images(
    out: str | os.PathLike,
    *,
    n_identities: int = 20,
    per_identity: int = 10,
    n_distractors: int = 1000,
    seed: int = 0,
    size: int = 112,
    n_mislabelled: int = 2,
    n_duplicates: int = 3,
    first_identity: int = 100_000,
    render: Render | None = None,
    progress: bool = True,
) -> dict:
    """Write the pack into ``out`` (see module doc); returns the meta dict (also ``out/meta.json``)."""
    from tqdm import tqdm

    from megabench.data.megaface_io import write_distractor_list, write_probe_list
    from megabench.fileio import atomic_write_bytes, atomic_write_json

    if n_identities < 2 or per_identity < 2 or n_distractors < 1:
        raise ValueError("need >= 2 identities of >= 2 images and >= 1 distractor")
    if render is None:
        from megabench.data.synthetic_faces import render_face as render
    out = Path(out)
    rng = np.random.default_rng([seed, 7])
    names = [f"Synth_Person_{c:03d}" for c in range(n_identities)]
    probe_paths = [f"{names[c]}/{names[c]}_{k}.png" for c in range(n_identities) for k in range(per_identity)]
    probe_ids = [names[c] for c in range(n_identities) for _ in range(per_identity)]
    n_probes = len(probe_paths)
    mislabelled = set(rng.choice(n_probes, size=min(n_mislabelled, n_probes), replace=False).tolist())
    n_dup = min(n_duplicates, n_distractors)
    duplicates = set(rng.choice(n_distractors, size=n_dup, replace=False).tolist())
    dist_paths = [distractor_path(i) for i in range(n_distractors)]
    bar = tqdm(total=n_probes + n_distractors, unit="img", desc="synth megaface images", disable=not progress)
    for i, rel in enumerate(probe_paths):
        c, k = divmod(i, per_identity)
        shown = (c + 1) % n_identities if i in mislabelled else c
        _save(out / "facescrub_images" / rel, render(first_identity + shown, k, seed=seed, size=size))
        bar.update()
    for i, rel in enumerate(dist_paths):
        ident, image = (int(rng.integers(n_identities)), per_identity + i) if i in duplicates else (n_identities + i, 0)
        _save(out / "megaface_images" / rel, render(first_identity + ident, image, seed=seed, size=size))
        bar.update()
    bar.close()

    write_probe_list(out / "facescrub_features_list.json", probe_paths, probe_ids)
    sizes = [s for s in STANDARD_SIZES if s <= n_distractors] + ([n_distractors] if n_distractors not in
                                                                 STANDARD_SIZES else [])
    for s in sizes:
        write_distractor_list(out / "lists" / f"megaface_features_list.json_{s}_1", dist_paths[:s])
    head = "#synthetic noise list written by megabench synth megaface --images\n"
    fs_noise = [os.path.basename(probe_paths[i]) for i in sorted(mislabelled)] + ["Nobody_Here_1.png"]
    mf_noise = [dist_paths[i] for i in sorted(duplicates)] + ["000/10000000@N00/0000000000_0.jpg"]
    atomic_write_bytes(out / "facescrub_noises.txt", (head + "\n".join(fs_noise) + "\n").encode())
    atomic_write_bytes(out / "megaface_noises.txt", (head + "\n".join(mf_noise) + "\n").encode())
    meta = {"generator": "megabench.data.synthetic_megaface_images", "seed": seed, "size": size,
            "first_identity": first_identity,
            "n_identities": n_identities, "per_identity": per_identity, "n_probes": n_probes,
            "n_distractors": n_distractors, "sizes": sizes, "n_mislabelled_probes": len(mislabelled),
            "n_near_duplicates": len(duplicates)}
    atomic_write_json(out / "meta.json", meta)
    return meta
