"""refshapes output stays byte-identical to the recorded output of the single-module generator.

The checksums below were recorded with refseg/data/refshapes.py at commit 39e7f41 (OpenCV 5.0.0,
numpy 2.4.6) for three small sets; every file is compared: the JPEG images, instances.json (RLE
masks), the refs file and meta.json (its ``stats.seconds``, a wall-clock time, set to 0). The JPEG
bytes depend on OpenCV's libjpeg: after an OpenCV upgrade, check the generator against the previous
version and record new checksums with ``checksums()``.
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

GOLDEN = {  # (seed, image_size, train, val, test) -> {file: sha256}; meta.json with stats.seconds = 0
    (0, 64, 12, 4, 4): {
        "images/000001.jpg": "9a4483c1822be05320c1cfd92f7a82a1a02cabd9d7c2b12be53f06eab71647c8",
        "images/000002.jpg": "65b24e1cb4b95654c13da4321542304c1d0c1fc2272e8109afdbfdcc1d7fa1fd",
        "images/000003.jpg": "40263e525f2b58637330779a85e04bfc81d38dc35d88743610937cfd7df33c56",
        "images/000004.jpg": "ced24185e94aaefd9300b4fe7e204b6ec2a6cc45dbeced86304abb96d0bbd003",
        "images/000005.jpg": "dfa1fcdea87024a74b1f356a06860347daa3906e9f8f4b3c8c2172e3824c1c9e",
        "images/000006.jpg": "918d9ee72085951150b715523d60bee690a8602b097e34788a8f5f37e621a8fa",
        "images/000007.jpg": "345eb8a4b0a9e02366f682aac0167b094eee2d8de77f7548d0eecb6e8fc71c4d",
        "images/000008.jpg": "c8dc59dfe25e177ef3c209cfa663da819f3c563994652497d7b81c5f76d58e10",
        "images/000009.jpg": "c44b6e15c0a469c67927e7bd8f4720d7e037364684ee73d74a41bcc85acc39fa",
        "images/000010.jpg": "3c7acb2ec3488253ed5f9083a816fa085478478f45de8fc58194990cd3573e77",
        "images/000011.jpg": "a0d57dcc21e5104a16c081b5134cb6c7c71ee60ef5410d34de225e0065cdc397",
        "images/000012.jpg": "5b995d977647dca4140db94a0bb92cfd78a1f6802b624662d7de4e2472dee809",
        "images/000013.jpg": "94bc67d3e3fdf6000dadeb0f8a789063de7a9c2b800cbac2b10f3979fcbc0117",
        "images/000014.jpg": "7aa4e0896263f66214077da912b6f399fdbb4783430493be408cac050453387b",
        "images/000015.jpg": "19d571c382c457d75ff949ff0887eccdc20a1126b809eefdebef12a721dcbc88",
        "images/000016.jpg": "05c74fde7cfd1951e9d71b68fa5a69707c1d05811a6bd4718244eaecaaadce22",
        "images/000017.jpg": "c5a4a480f6ae49a3f3920bfaface650c6f673857efcaecdce87f2c07487e23b5",
        "images/000018.jpg": "7d79f19ed6f81d9a44294966052f7d1009fbb19e926a343aae7d17f7426b76c3",
        "images/000019.jpg": "c9c457aaafd09e63d3381b42bc13002110acb50be5274ec29caf106935ac9b2a",
        "images/000020.jpg": "c61db346292046391a5838e7e3274726a47e5c0e8679541056e23c80ef07c028",
        "instances.json": "e6440e0017ed7189dc89e85abbf25ac23bdddb4816f67cf4c394295239812935",
        "meta.json": "3d682a280f9a85b14ea1695932260119757f2d9cd55032639f357f9a8a30b960",
        "refs(refshapes).json": "79240e3fb3b3ad943145ce2d7a1a82cdbdc090bbfecdbf22ea9a79b75b779007",
    },
    (1, 128, 6, 2, 2): {
        "images/000001.jpg": "d3b62ad20fcea4fcb442562d913d1fbedbd1f77756cdf2608eb6e13823996919",
        "images/000002.jpg": "94ffd04db4cbb0a436e4f91c6b26d0c8e4f84c2509eb455d8996fb53a74a66bd",
        "images/000003.jpg": "ad8eb2600b8a99c1be45e6f5034eb8ad10977a2aed791124319bcb5a946d6666",
        "images/000004.jpg": "57a777cce9f7b7c2efa7860aeeb1ab53d7fcccbc294e336c984c5378f57b96cb",
        "images/000005.jpg": "7f2377dc82c73cba17fe86e81c897a9b6c881487abbbb9c00f7344584426eb8a",
        "images/000006.jpg": "791a66529673c235747c175e790b2c45f6f3c6ea177e941909be3dec1faf2b67",
        "images/000007.jpg": "9f9c6b07e1e258ec2822bb21a57ae481b1ccc169f0832afe8e87e53635db14da",
        "images/000008.jpg": "8b18b9241c89e4f40a9a0592ce3f9e92a6c6dbe5c90be2f9c85948ed11e6d1dc",
        "images/000009.jpg": "24bd79e7a5f48d388957d136d6f890a9aa0fdf5237ac3014b71ba0b090d68f4a",
        "images/000010.jpg": "529daa0b3944cc159413c675016dbdd9e1b111ee4c957c997b24cc9ee71f8f14",
        "instances.json": "d25c0a4a51c536916896d7801ed66344e8cd735f7d0985bc03e64cb54f2f6b30",
        "meta.json": "25ffd2e54255de25843738badace394cd6bef2cbe54e5f3ea6a858598846466c",
        "refs(refshapes).json": "904c51e5f4b878d3b9a4b4998fd9c6975e8861b2458f2e85bca3b40fc4fb9a1f",
    },
    (1, 192, 3, 1, 1): {
        "images/000001.jpg": "60431257e0e6a482ec578d6feea1a6188a7bc2f84444879924335220847a4c0e",
        "images/000002.jpg": "eae7c86b2118c95d166eba8ec4ed654f8a50c2afb01592e7ca22cbcc7749a7b5",
        "images/000003.jpg": "886bdfbdb3cb42d88143478f2b7fd2f3d38fb3437016a9038b65ee68da5f0630",
        "images/000004.jpg": "d7c6d7ed7f933724b1338a9c0f043f9a9990ae6c4c7c23178d3b7620e787c0ce",
        "images/000005.jpg": "7ceb668a566760c297d7b9030aea7f85faa075f1d2a0a61cca9929ba1720ce65",
        "instances.json": "8285a61a45eb1081247d98f54484a3de68c8982afabe849b76e0dcd2ec2c5b8b",
        "meta.json": "c8a110cb6a09a8995353892fbde90b2eb81de66ef2e58c133319ce505b03059d",
        "refs(refshapes).json": "4992ded4b2fb8752bd8df65763929925a4bda19017ec240cf19f35128b0c44b2",
    },
}


def checksums(path: Path) -> dict[str, str]:
    """{relative file name: sha256} of a written refshapes folder (meta.json without its wall time)."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "meta.json":
                meta = json.loads(data)
                meta["stats"]["seconds"] = 0
                data = json.dumps(meta, indent=2).encode()
            out[str(p.relative_to(path))] = hashlib.sha256(data).hexdigest()
    return out


@pytest.mark.parametrize("params", list(GOLDEN), ids=lambda p: "seed{}-{}px-{}+{}+{}".format(*p))
def test_generated_files_match_the_recorded_checksums(tmp_path, params):
    seed, size, train, val, test = params
    path = write_refshapes(tmp_path, train, val, test, size, seed, progress=False)
    got, want = checksums(path), GOLDEN[params]
    assert sorted(got) == sorted(want)
    differ = [name for name in want if got[name] != want[name]]
    assert not differ, (f"{len(differ)} of {len(want)} files differ from the recorded ones, e.g. {differ[:3]} "
                        f"(recorded with {RECORDED_WITH}; running OpenCV {cv2.__version__}, numpy {np.__version__})")
