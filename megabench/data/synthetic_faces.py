"""Synthetic faces that a small network can learn: a training set (insightface RecordIO) and a
held-out verification pack (insightface ``.bin``, LFW's 10-fold layout), deterministic given a seed.

:func:`render_face` draws identity ``k``'s image ``j`` as a 112x112 RGB uint8 array. Everything that
makes an identity is drawn from ``SeedSequence([seed, 0, k])``: face outline (width, height, chin
shape), skin tone, a low-frequency skin texture and moles, hair (colour, hairline, style, fringe
slope), eyes (position, spacing, size, iris colour), eyebrows (height, thickness, tilt), nose
(length, width), mouth (position, width, thickness, curvature, lip colour), sometimes a beard.
Everything that varies from image to image comes from ``SeedSequence([seed, 1, k, j])``: the
background, a shift / rotation / scale of the whole face, expression (mouth and eye openness),
an illumination gradient, brightness, contrast, colour cast, pixel noise, sometimes an occluding
patch, and the JPEG quality. Identities ``0 .. N-1`` train; the pack uses identities ``N ..``, so
it never shows a training identity.

Difficulty is set by :data:`POSE_JITTER` and :data:`PHOTO_JITTER` (multipliers of the per-image
jitter; the defaults are the calibrated ones of docs/training-data.md).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GENERATOR_VERSION = 2
#: multipliers of the per-image jitter: pose (shift, rotation, scale, expression) and photometric
#: (illumination, brightness, contrast, colour cast, noise, occlusion)
POSE_JITTER = 0.4
PHOTO_JITTER = 1.0

_SKIN_LIGHT = np.array([238.0, 204.0, 180.0])
_SKIN_DARK = np.array([96.0, 62.0, 44.0])
_HAIR = np.array([[28, 22, 18], [62, 40, 24], [120, 82, 46], [196, 164, 104], [140, 52, 26], [150, 150, 150],
                  [90, 70, 55]], dtype=np.float64)
_IRIS = np.array([[70, 45, 25], [40, 90, 150], [60, 110, 70], [30, 25, 20], [110, 90, 60]], dtype=np.float64)


@dataclass(frozen=True)
class Identity:
    """The identity-specific parameters of :func:`render_face` (face units: half face height ~ 1)."""

    face_a: float
    face_b: float
    chin_p: float
    skin: np.ndarray
    texture: np.ndarray  # (6, 6) low-frequency skin shading, in intensity units
    moles: np.ndarray  # (M, 3): u, v, radius
    hair: np.ndarray
    hairline: float
    hair_style: int  # 0 short, 1 long, 2 receding
    fringe: float
    eye_y: float
    eye_x: float
    eye_rx: float
    eye_ry: float
    iris: np.ndarray
    brow_dy: float
    brow_t: float
    brow_tilt: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    mouth_h: float
    mouth_c: float
    lips: np.ndarray
    beard: bool
    glasses: bool


@functools.lru_cache(maxsize=8192)
def identity_params(identity: int, seed: int) -> Identity:
    """Draw identity ``identity``'s parameters (deterministic in ``(seed, identity)``)."""
    r = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0, int(identity)]))
    skin = _SKIN_DARK + r.uniform(0, 1) * (_SKIN_LIGHT - _SKIN_DARK) + r.normal(0, 8, 3)
    hair = _HAIR[r.integers(len(_HAIR))] + r.normal(0, 10, 3)
    n_moles = int(r.integers(0, 4))
    return Identity(
        face_a=r.uniform(0.70, 0.92), face_b=r.uniform(0.98, 1.18), chin_p=r.uniform(1.7, 2.8),
        skin=skin, texture=r.normal(0, 14, (6, 6)),
        moles=np.column_stack([r.uniform(-0.55, 0.55, n_moles), r.uniform(-0.5, 0.7, n_moles),
                               r.uniform(0.025, 0.05, n_moles)]),
        hair=hair, hairline=r.uniform(-0.78, -0.42), hair_style=int(r.integers(3)), fringe=r.uniform(-0.35, 0.35),
        eye_y=r.uniform(-0.28, -0.05), eye_x=r.uniform(0.26, 0.42), eye_rx=r.uniform(0.12, 0.19),
        eye_ry=r.uniform(0.055, 0.095), iris=_IRIS[r.integers(len(_IRIS))] + r.normal(0, 8, 3),
        brow_dy=r.uniform(0.10, 0.22), brow_t=r.uniform(0.03, 0.075), brow_tilt=r.uniform(-0.35, 0.35),
        nose_len=r.uniform(0.14, 0.36), nose_w=r.uniform(0.07, 0.17),
        mouth_y=r.uniform(0.44, 0.66), mouth_w=r.uniform(0.17, 0.33), mouth_h=r.uniform(0.035, 0.08),
        mouth_c=r.uniform(-0.16, 0.16), lips=skin * 0.55 + np.array([150.0, 30.0, 40.0]) * 0.45 + r.normal(0, 8, 3),
        beard=bool(r.uniform() < 0.2), glasses=bool(r.uniform() < 0.2),
    )


def _soft(f: np.ndarray, edge: float) -> np.ndarray:
    """Coverage in [0, 1] of the region ``f < 1``, anti-aliased over ``edge`` (units of f)."""
    return np.clip((1.0 - f) / edge, 0.0, 1.0)


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray | float) -> None:
    """Blend ``colour`` (a constant or an (H, W, 3) field) into ``img`` with coverage ``mask``, in place,
    touching only the bounding box of the mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    colour = np.asarray(colour, dtype=np.float32)
    target = colour[box] if colour.ndim == 3 else colour
    img[box] += mask[box][..., None] * (target - img[box])


_TEX = 64  # texture lookup resolution over [-1.2, 1.2]^2 face units


@functools.lru_cache(maxsize=8192)
def _texture_table(identity: int, seed: int) -> np.ndarray:
    """The identity's (6, 6) shading grid upsampled bilinearly to (_TEX, _TEX), float32."""
    grid = identity_params(identity, seed).texture
    g = grid.shape[0]
    t = np.linspace(0, g - 1.001, _TEX)
    i0 = t.astype(int)
    f = t - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]  # (_TEX, g)
    return (rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]).astype(np.float32)


def _texture(identity: int, seed: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The identity's skin shading at face coordinates (u, v) (nearest entry of the table)."""
    table = _texture_table(identity, seed)
    ix = np.clip(((u + 1.2) * ((_TEX - 1) / 2.4) + 0.5).astype(np.int32), 0, _TEX - 1)
    iy = np.clip(((v + 1.2) * ((_TEX - 1) / 2.4) + 0.5).astype(np.int32), 0, _TEX - 1)
    return table[iy, ix]


def _draw_head(img: np.ndarray, p: Identity, u: np.ndarray, v: np.ndarray, px: float, tex: np.ndarray
               ) -> np.ndarray:
    """Hair behind, face, hair on top; returns the face coverage mask."""
    head = (np.abs(u) / (p.face_a * 1.08)) ** 2 + (np.abs(v + 0.08) / (p.face_b * 1.08)) ** 2
    if p.hair_style == 1:  # long hair: a wide band behind the face down to the jaw
        back = (u / (p.face_a * 1.32)) ** 2 + ((v - 0.05) / (p.face_b * 1.18)) ** 2
        _paint(img, _soft(back, px * 3) * (v < 0.75), p.hair)
    shape = np.abs(u / p.face_a) ** p.chin_p * (v > 0) + (u / p.face_a) ** 2 * (v <= 0) + (v / p.face_b) ** 2
    face = _soft(shape, px * 3)
    _paint(img, face, p.skin[None, None, :] + tex[..., None])
    line = p.hairline + p.fringe * u
    if p.hair_style == 2:  # receding: hair only on the sides
        top = (v < line + 0.45) & (v > line - 0.25) & (np.abs(u) > p.face_a * 0.62)
    else:
        top = v < line
    _paint(img, _soft(head, px * 3) * top * np.clip((line - v) / (px * 2) + 0.5, 0, 1), p.hair)
    return face


def _draw_features(img: np.ndarray, p: Identity, u: np.ndarray, v: np.ndarray, px: float, expr: np.ndarray) -> None:
    """Eyes, eyebrows, nose, mouth, moles, beard; ``expr`` = (eye openness, mouth open, smile)."""
    for side in (-1.0, 1.0):
        du, dv = u - side * p.eye_x, v - p.eye_y
        ry = p.eye_ry * expr[0]
        eye = _soft((du / p.eye_rx) ** 2 + (dv / ry) ** 2, px * 4 / ry)
        _paint(img, eye, [236.0, 232.0, 226.0])
        iris = _soft((du ** 2 + dv ** 2) / (0.75 * p.eye_ry) ** 2, px * 4 / p.eye_ry) * eye
        _paint(img, iris, p.iris)
        _paint(img, _soft((du ** 2 + dv ** 2) / (0.3 * p.eye_ry) ** 2, 0.5) * eye, 15.0)
        bu, bv = du, dv + p.brow_dy + side * p.brow_tilt * du
        brow = _soft((bu / (p.eye_rx * 1.25)) ** 2 + (bv / p.brow_t) ** 2, px * 3 / p.brow_t)
        _paint(img, brow, p.hair * 0.7)
    dark = p.skin * 0.72
    nose = (u / (p.nose_w * 0.35)) ** 2 + ((v - p.nose_len / 2) / (p.nose_len * 0.55)) ** 2
    _paint(img, 0.45 * _soft(nose, 0.6), dark)
    for side in (-1.0, 1.0):
        nostril = ((u - side * p.nose_w * 0.45) / (p.nose_w * 0.3)) ** 2 + ((v - p.nose_len) / 0.03) ** 2
        _paint(img, 0.7 * _soft(nostril, 0.8), p.skin * 0.45)
    mw = p.mouth_w
    mv = v - p.mouth_y + (p.mouth_c + expr[2]) * (1 - (u / mw) ** 2) * 0.5
    mouth = (u / mw) ** 2 + (mv / (p.mouth_h * expr[1])) ** 2
    _paint(img, _soft(mouth, px * 4 / (p.mouth_h * expr[1])), p.lips)
    _paint(img, _soft((u / mw) ** 2 + (mv / (px * 0.8)) ** 2, 0.5) * 0.8, p.lips * 0.45)
    for mu, mvv, mr in p.moles:
        _paint(img, 0.8 * _soft(((u - mu) ** 2 + (v - mvv) ** 2) / mr ** 2, 0.4), p.skin * 0.4)
    if p.glasses:
        for side in (-1.0, 1.0):
            ring = ((u - side * p.eye_x) / (p.eye_rx * 1.5)) ** 2 + ((v - p.eye_y) / (p.eye_rx * 1.1)) ** 2
            _paint(img, _soft(ring, 0.15) * np.clip((ring - 0.62) / 0.08, 0, 1), 25.0)
        bridge = (np.abs(u) < p.eye_x - p.eye_rx * 1.4) & (np.abs(v - p.eye_y) < 0.025)
        _paint(img, bridge.astype(np.float32), 25.0)
    if p.beard:
        jaw = (v > p.mouth_y - 0.1) & ((u / p.face_a) ** 2 + (v / p.face_b) ** 2 < 1.0)
        _paint(img, 0.75 * jaw * (1 - _soft(mouth, 0.5)), p.hair)


def render_face(identity: int, image: int, *, seed: int, size: int = 112, pose_jitter: float | None = None,
                photo_jitter: float | None = None) -> np.ndarray:
    """Image ``image`` of identity ``identity``: an RGB uint8 ``(size, size, 3)`` array.

    Deterministic in its arguments; see the module docstring for what is identity-specific and what
    is per-image jitter. ``pose_jitter`` / ``photo_jitter`` default to :data:`POSE_JITTER` /
    :data:`PHOTO_JITTER`.
    """
    p = identity_params(identity, seed)
    r = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 1, int(identity), int(image)]))
    j = POSE_JITTER if pose_jitter is None else float(pose_jitter)
    unit = size * 0.36 * r.uniform(1 - 0.07 * j, 1 + 0.07 * j)  # pixels per face unit
    cx = size / 2 + np.clip(r.normal(0, 2.2 * j), -6, 6) * size / 112
    cy = size * 0.54 + np.clip(r.normal(0, 2.2 * j), -6, 6) * size / 112
    rot = np.deg2rad(np.clip(r.normal(0, 6.0 * j), -15, 15))
    expr = np.array([r.uniform(1 - 0.35 * j, 1.1), r.uniform(0.8, 1 + 0.8 * j), r.normal(0, 0.05 * j)])

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    dx, dy = xs - cx, ys - cy
    u = ((dx * np.cos(rot) + dy * np.sin(rot)) / unit).astype(np.float32)
    v = ((-dx * np.sin(rot) + dy * np.cos(rot)) / unit).astype(np.float32)
    px = 1.0 / unit

    bg = r.uniform(20, 235, 3)
    bg2 = r.uniform(20, 235, 3)
    t = (xs * np.cos(r.uniform(0, 2 * np.pi)) / size)[..., None]
    img = (bg + (bg2 - bg) * np.clip(t + 0.5, 0, 1)).astype(np.float32)
    for _ in range(int(r.integers(0, 4))):  # background clutter
        c = r.uniform(0, size, 2)
        rad = r.uniform(0.1, 0.35, 2) * size
        _paint(img, _soft(((xs - c[0]) / rad[0]) ** 2 + ((ys - c[1]) / rad[1]) ** 2, 0.2), r.uniform(0, 255, 3))
    _draw_head(img, p, u, v, px, _texture(identity, seed, u, v))
    _draw_features(img, p, u, v, px, expr)
    _photometric(img, r, xs, ys, size, PHOTO_JITTER if photo_jitter is None else float(photo_jitter))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _photometric(img: np.ndarray, r: np.random.Generator, xs: np.ndarray, ys: np.ndarray, size: int,
                 j: float) -> None:
    """Occlusion, illumination gradient, brightness, contrast, colour cast, noise (in place)."""
    if r.uniform() < 0.12 * j:
        w, h = r.uniform(0.25, 0.55, 2) * size
        x0, y0 = r.uniform(0, size - w), r.uniform(size * 0.2, size - h)
        box = (xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + h)
        _paint(img, box.astype(np.float32), r.uniform(0, 255, 3))
    angle = r.uniform(0, 2 * np.pi)
    grad = ((xs - size / 2) * np.cos(angle) + (ys - size / 2) * np.sin(angle)) / size
    img *= (1.0 + np.float32(r.uniform(0, 0.6 * j)) * grad)[..., None]
    img *= (r.uniform(1 - 0.2 * j, 1 + 0.15 * j) * (1 + r.normal(0, 0.04 * j, 3))).astype(np.float32)
    mean = img.mean()
    img -= mean
    img *= np.float32(r.uniform(1 - 0.2 * j, 1 + 0.15 * j))
    img += mean
    img += r.standard_normal(img.shape, dtype=np.float32) * np.float32(r.uniform(1.0, 1.0 + 5.0 * j))


# ---------------------------------------------------------------------------------------------
# data sets on disk


@dataclass(frozen=True)
class SynthFacesResult:
    out: Path
    rec: Path
    pack: Path
    identities: int
    images: int
    pack_identities: int
    pairs: int


def heldout_pairs(n_pairs: int, first_identity: int, n_identities: int, seed: int
                  ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """LFW-style pairs over identities ``first_identity ..`` (``n_identities`` of them).

    Returns ``issame`` (10 folds, first half of each fold genuine) and per pair
    ``(identity1, image1, identity2, image2)``; every image index is used once per identity.
    """
    from megabench.data.synthetic_verification import pair_layout

    if n_pairs < 20 or n_pairs % 20:
        raise ValueError(f"pairs must be a positive multiple of 20 (10 folds, half genuine), got {n_pairs}")
    if n_identities < 2:
        raise ValueError("the held-out pack needs at least 2 identities")
    issame = pair_layout(n_pairs, 10)
    r = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 2]))
    next_image = np.zeros(n_identities, dtype=np.int64)

    def take(k: int) -> tuple[int, int]:
        next_image[k] += 1
        return first_identity + k, int(next_image[k] - 1)

    pairs: list[tuple[int, int, int, int]] = []
    for same in issame:
        a = int(r.integers(n_identities))
        b = a if same else int((a + r.integers(1, n_identities)) % n_identities)
        pairs.append((*take(a), *take(b)))
    return issame, pairs


def default_pairs(pack_identities: int) -> int:
    """6 pairs per held-out identity, a multiple of 20, at least 200 and at most 6000."""
    return int(min(6000, max(200, (6 * pack_identities) // 20 * 20)))


def face_jpeg(identity: int, image: int, *, seed: int, size: int = 112, **jitter: float | None) -> bytes:
    """:func:`render_face` encoded as JPEG at a per-image quality in [80, 95] (deterministic): the
    exact bytes that :func:`generate_synthetic_faces` stores."""
    from megabench.data.bin_format import encode_image

    r = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 3, int(identity), int(image)]))
    quality = int(r.integers(80, 96))
    return encode_image(render_face(identity, image, seed=seed, size=size, **jitter), fmt="jpeg", quality=quality)


def _jpeg_chunk(keys: list[tuple[int, int]], seed: int, size: int, pose: float, photo: float) -> list[bytes]:
    return [face_jpeg(k, i, seed=seed, size=size, pose_jitter=pose, photo_jitter=photo) for k, i in keys]


def render_jpegs(keys: list[tuple[int, int]], *, seed: int, size: int, workers: int = 1, chunk: int = 128,
                 progress=None) -> list[bytes]:
    """:func:`face_jpeg` of every ``(identity, image)`` in ``keys``, in order; ``workers > 1`` renders
    chunks in that many worker processes (same bytes). ``progress(n)`` is called per finished chunk."""
    chunks = [keys[i: i + chunk] for i in range(0, len(keys), chunk)]
    args = (seed, size, POSE_JITTER, PHOTO_JITTER)
    out: list[bytes] = []
    if workers <= 1 or len(chunks) < 2:
        results = (_jpeg_chunk(c, *args) for c in chunks)
        for part in results:
            out += part
            if progress:
                progress(len(part))
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork where the platform has it: nothing to re-import, and the children only run numpy and Pillow
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        for part in pool.map(_jpeg_chunk, chunks, *([a] * len(chunks) for a in args)):
            out += part
            if progress:
                progress(len(part))
    return out


def generate_synthetic_faces(
    out_dir: str | os.PathLike,
    *,
    identities: int,
    images_per_identity: int,
    seed: int = 0,
    pack_identities: int = 100,
    pairs: int | None = None,
    name: str = "heldout",
    size: int = 112,
    progress: bool = False,
    workers: int = 1,
) -> SynthFacesResult:
    """Write ``train.rec``/``train.idx``/``property`` (identities ``0..N-1``), ``<name>.bin`` (pairs of
    identities ``N..N+pack_identities-1``) and ``meta.json`` into ``out_dir``. Deterministic in the
    arguments, whatever ``workers`` (processes that render; 1 = this process). Each file is written
    atomically."""
    from tqdm import tqdm

    from megabench.data.bin_format import write_bin
    from megabench.data.recordio import write_insightface_recordio
    from megabench.fileio import atomic_write_json

    if identities < 2 or images_per_identity < 1:
        raise ValueError("need at least 2 identities and 1 image per identity")
    out = Path(out_dir)
    n_pairs = default_pairs(pack_identities) if pairs is None else int(pairs)
    issame, pair_list = heldout_pairs(n_pairs, identities, pack_identities, seed)
    total = identities * images_per_identity + 2 * n_pairs
    train_keys = [(k, i) for k in range(identities) for i in range(images_per_identity)]
    pack_keys = [key for a, i, b, j in pair_list for key in ((a, i), (b, j))]
    with tqdm(total=total, desc="synth faces", unit="img", disable=not progress) as bar:
        jpegs = render_jpegs(train_keys + pack_keys, seed=seed, size=size, workers=workers, progress=bar.update)
    n_train = len(train_keys)
    rec = write_insightface_recordio(out, ((k, b) for (k, _), b in zip(train_keys, jpegs[:n_train], strict=True)),
                                     image_size=(size, size))
    pack_images = jpegs[n_train:]
    pack = write_bin(out / f"{name}.bin", pack_images, issame, protocol=2)
    atomic_write_json(out / "meta.json", {
        "generator": "megabench.data.synthetic_faces", "version": GENERATOR_VERSION, "seed": seed,
        "identities": identities, "images_per_identity": images_per_identity, "image_size": [size, size],
        "pack": pack.name, "pack_identities": pack_identities, "pack_first_identity": identities,
        "pairs": n_pairs, "pose_jitter": POSE_JITTER, "photo_jitter": PHOTO_JITTER,
    })
    return SynthFacesResult(out=out, rec=rec, pack=pack, identities=identities,
                            images=identities * images_per_identity, pack_identities=pack_identities, pairs=n_pairs)
