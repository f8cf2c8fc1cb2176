"""refshapes output stays what the single-module generator wrote (refseg/data/refshapes.py, commit 39e7f41).

The content is compared exactly: instances.json (every object's mask as RLE, its box, area and
category: the geometry), the refs file (targets, splits, expressions and their types) and meta.json
(its ``stats.seconds``, a wall-clock time, set to 0), by sha256. The JPEG images are compared by their
pixels, within a tolerance, not by their bytes (those depend on OpenCV's libjpeg and its float
rendering): each decoded image's 8 x 8 block means (``cv2.INTER_AREA``) are recorded in
``refshapes_golden_pixels.json`` and may move by at most ``PIXEL_TOLERANCE`` grey levels. Recorded with
OpenCV 5.0.0 and numpy 2.4.6 (the JPEGs then were byte-identical to 39e7f41's); after a deliberate
change of the generator, record again with ``record_pixels()``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from refseg.data.refshapes import write_refshapes

RECORDED_WITH = "OpenCV 5.0.0, numpy 2.4.6"
PIXELS = Path(__file__).with_name("refshapes_golden_pixels.json")
PIXEL_TOLERANCE = 4.0  # grey levels, per 8 x 8 block mean and channel

GOLDEN = {  # (seed, image_size, train, val, test) -> {json file: sha256}; meta.json with stats.seconds = 0
    (0, 64, 12, 4, 4): {
        "instances.json": "e6440e0017ed7189dc89e85abbf25ac23bdddb4816f67cf4c394295239812935",
        "meta.json": "3d682a280f9a85b14ea1695932260119757f2d9cd55032639f357f9a8a30b960",
        "refs(refshapes).json": "79240e3fb3b3ad943145ce2d7a1a82cdbdc090bbfecdbf22ea9a79b75b779007",
    },
    (1, 128, 6, 2, 2): {
        "instances.json": "d25c0a4a51c536916896d7801ed66344e8cd735f7d0985bc03e64cb54f2f6b30",
        "meta.json": "25ffd2e54255de25843738badace394cd6bef2cbe54e5f3ea6a858598846466c",
        "refs(refshapes).json": "904c51e5f4b878d3b9a4b4998fd9c6975e8861b2458f2e85bca3b40fc4fb9a1f",
    },
    (1, 192, 3, 1, 1): {
        "instances.json": "8285a61a45eb1081247d98f54484a3de68c8982afabe849b76e0dcd2ec2c5b8b",
        "meta.json": "c8a110cb6a09a8995353892fbde90b2eb81de66ef2e58c133319ce505b03059d",
        "refs(refshapes).json": "4992ded4b2fb8752bd8df65763929925a4bda19017ec240cf19f35128b0c44b2",
    },
}


def _key(params) -> str:
    return "seed{}-{}px-{}+{}+{}".format(*params)


def checksums(path: Path) -> dict[str, str]:
    """{file name: sha256} of the JSON files of a written refshapes folder (meta.json without its wall time)."""
    out = {}
    for p in sorted(path.glob("*.json")):
        data = p.read_bytes()
        if p.name == "meta.json":
            meta = json.loads(data)
            meta["stats"]["seconds"] = 0
            data = json.dumps(meta, indent=2).encode()
        out[p.name] = hashlib.sha256(data).hexdigest()
    return out


def thumbnails(path: Path) -> dict[str, np.ndarray]:
    """{image file: its 8 x 8 x 3 block means (float, RGB)} of a written refshapes folder."""
    out = {}
    for p in sorted((path / "images").iterdir()):
        rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        out[f"images/{p.name}"] = cv2.resize(rgb.astype(np.float32), (8, 8), interpolation=cv2.INTER_AREA)
    return out


def record_pixels(tmp: Path) -> None:
    """Write refshapes_golden_pixels.json from the generator as it is now."""
    rec = {}
    for params in GOLDEN:
        path = write_refshapes(tmp / _key(params), *params[2:], params[1], params[0], progress=False)
        rec[_key(params)] = {k: [int(x) for x in np.rint(v).reshape(-1)] for k, v in thumbnails(path).items()}
    PIXELS.write_text(json.dumps(rec, separators=(",", ":")) + "\n")


@pytest.mark.parametrize("params", list(GOLDEN), ids=_key)
def test_generated_content_matches_the_recorded_one(tmp_path, params):
    seed, size, train, val, test = params
    path = write_refshapes(tmp_path, train, val, test, size, seed, progress=False)
    got, want = checksums(path), GOLDEN[params]
    assert sorted(got) == sorted(want)
    differ = [name for name in want if got[name] != want[name]]
    assert not differ, f"{differ} differ from the recorded content (masks, boxes, expressions or parameters)"
    recorded = json.loads(PIXELS.read_text())[_key(params)]
    thumbs = thumbnails(path)
    assert sorted(thumbs) == sorted(recorded) and len(thumbs) == train + val + test
    for name, t in thumbs.items():
        assert cv2.imread(str(path / name)).shape == (size, size, 3), name
        gap = float(np.abs(t.reshape(-1) - np.asarray(recorded[name], np.float32)).max())
        assert gap <= PIXEL_TOLERANCE, (f"{name}: a block mean moved by {gap:.1f} grey levels (tolerance "
                                        f"{PIXEL_TOLERANCE}; recorded with {RECORDED_WITH}, running OpenCV "
                                        f"{cv2.__version__}, numpy {np.__version__})")
