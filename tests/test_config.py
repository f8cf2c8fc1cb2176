from pathlib import Path

import pytest

from conftest import TINY_OVERRIDES
from refseg.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides():
    cfg = load_config(overrides=["train.max_steps=10", "model.crossvit.enabled=false", "train.lr=1e-4",
                                 "model.vision.out_indices=[1,2,3,4]", "model.vision.pretrained=null"])
    assert cfg.train.max_steps == 10 and cfg.model.crossvit.enabled is False
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.vision.out_indices == [1, 2, 3, 4]
    assert cfg.model.vision.pretrained is None


def test_design_keys_exist():
    cfg = Config()
    for key in ["data.name", "data.root", "data.split_by", "model.image_size", "model.vision.arch",
                "model.vision.name", "model.vision.pretrained", "model.crossvit.enabled",
                "model.text.name", "model.text.max_tokens", "train.max_steps", "train.batch_size",
                "train.lr", "train.seed", "train.checkpoint_every", "train.eval_every"]:
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
    assert cfg.model.text.max_tokens == 20


@pytest.mark.parametrize("override, fragment", [
    ("train.max_step=1", "did you mean 'train.max_steps'"),
    ("model.vision.pretrain=x", "did you mean 'model.vision.pretrained'"),
    ("trian.lr=1", "did you mean 'train.lr'"),
    ("train.lr=fast", "train.lr"),
    ("train.batch_size=2.5", "train.batch_size"),
    ("model.crossvit.enabled=maybe", "model.crossvit.enabled"),
    ("model.vision.arch=resnet", "model.vision.arch"),
    ("train.lr", "key=value"),
])
def test_bad_overrides_name_the_field(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert fragment in str(e.value)


def test_yaml_file_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  num_worker: 2\n")
    with pytest.raises(ConfigError, match="data.num_workers"):
        load_config(p)
    p.write_text("train:\n  lr: [1, 2]\n")
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_default_yaml_is_the_embedded_default():
    """configs/default.yaml documents the embedded default: generated from the schema, so they cannot drift."""
    from refseg.config import format_config_help

    assert (REPO / "configs" / "default.yaml").read_text() == format_config_help(), \
        "configs/default.yaml is stale: python train.py --help-config > configs/default.yaml"
    assert load_config(REPO / "configs" / "default.yaml").to_dict() == Config().to_dict()


def test_all_shipped_configs_load():
    files = sorted((REPO / "configs").glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        load_config(f)


def test_save_roundtrip(tmp_path):
    cfg = load_config(overrides=["train.seed=7", "model.text.trainable_layers=[0,1]"])
    cfg.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").to_dict() == cfg.to_dict()


def test_a_variant_name_is_its_shape(tmp_path):
    """The name alone gives the shape (xcit_<size>_<depth>_p<patch>); overrides apply on top of it."""
    from refseg.models.xcit import xcit_variant_args

    default = load_config()
    assert default.model.vision.name == "xcit_micro_6_p8" and default.model.vision.embed_dim is None
    assert {k: v for k, v in xcit_variant_args("xcit_micro_6_p8").items() if k != "eta"} == dict(
        embed_dim=96, depth=6, num_heads=4, patch_size=8)
    assert xcit_variant_args("xcit_small_12_p16_384.fb_dist_in1k")["embed_dim"] == 384
    cfg = load_config(overrides=["model.vision.name=xcit_small_12_p16"])
    assert cfg.model.vision.embed_dim is None and cfg.model.vision.depth is None
    for f in ["xcit_s12_p16_480.yaml", "xcit_m24_p8_480.yaml", "refcoco.yaml"]:
        assert load_config(REPO / "configs" / f).model.vision.embed_dim is None
    with pytest.raises(ValueError, match="unknown XCiT variant"):
        xcit_variant_args("xcit_huge_12_p8")


def test_choices_are_checked_when_the_config_loads():
    """Literal fields fail at load time with the valid choices, not later when the model is built."""
    with pytest.raises(ConfigError, match="model.vision.arch: expected one of xcit_columnar, xcit_hierarchical, swin"):
        load_config(overrides=["model.vision.arch=vit"])
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        load_config(overrides=["train.mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="model.text.trainable_layers"):
        load_config(overrides=["model.text.trainable_layers=some"])
    with pytest.raises(ConfigError, match="model.image_size: must be at least 32"):
        load_config(overrides=["model.image_size=8"])


def test_a_choice_that_yaml_reads_as_a_boolean_is_kept(tmp_path):
    """`train.mixed_precision=no` (and `mixed_precision: no` in a file): YAML 1.1 reads `no` as false."""
    assert load_config(overrides=["train.mixed_precision=no"]).train.mixed_precision == "no"
    (tmp_path / "c.yaml").write_text("train:\n  mixed_precision: no\n")
    assert load_config(tmp_path / "c.yaml").train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="train.mixed_precision: expected one of"):
        load_config(overrides=["train.mixed_precision=true"])


def test_every_field_has_help_and_help_config_lists_it():
    from refseg.config import config_fields, format_config_help

    fields = config_fields()
    assert len(fields) > 50
    missing = [f.key for f in fields if len(f.help.strip()) < 10]
    assert not missing, f"config fields without help text: {missing}"
    text = format_config_help()
    for f in fields:
        assert f"# {f.key} ({f.type}): {f.help}" in text, f.key


def test_base_files_merge_under_the_file(tmp_path):
    (tmp_path / "model.yaml").write_text("model:\n  image_size: 96\n  decoder:\n    hidden_dim: 32\n")
    (tmp_path / "run.yaml").write_text("base: model.yaml\nmodel:\n  decoder:\n    align_corners: true\n"
                                       "train:\n  lr: 1.0e-4\n")
    cfg = load_config(tmp_path / "run.yaml")
    assert (cfg.model.image_size, cfg.model.decoder.hidden_dim, cfg.model.decoder.align_corners) == (96, 32, True)
    assert cfg.train.lr == pytest.approx(1e-4)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "bad.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "bad.yaml")


def test_renamed_key_is_accepted():
    assert load_config(overrides=["data.image_size=64"]).model.image_size == 64


def test_losses_belong_to_the_model_config():
    """The losses are part of the model config (the model computes them): the deep-supervision heads
    exist exactly when their weight is above 0, so no heads without a loss can be configured; the old
    ``loss.*`` keys are accepted as overrides and in files you write."""
    from refseg.models import build_model

    cfg = load_config(overrides=["loss.deep_supervision_weight=0", "loss.dice_weight=0.5"])
    assert cfg.model.loss.deep_supervision_weight == 0 and cfg.model.loss.dice_weight == 0.5
    assert not hasattr(cfg, "loss")
    assert build_model(load_config(overrides=list(TINY_OVERRIDES) + ["model.loss.deep_supervision_weight=0"]),
                       load_pretrained=False).deep_heads is None
    with pytest.raises(ConfigError, match="unknown config key 'model.decoder.deep_supervision'"):
        load_config(overrides=["model.decoder.deep_supervision=false"])


def test_old_saved_configs_are_migrated(tmp_path):
    """A run or checkpoint saved before config_version existed keeps the behaviour it was trained with:
    LAVT's align_corners=true, no deep-supervision heads, data.image_size as the model's input size.
    A file you write without a version gets today's defaults; a newer version is refused."""
    import yaml

    from refseg.config import CONFIG_VERSION, load_run_config

    old = {"data": {"name": "refshapes", "image_size": 96},
           "model": {"vision": {"name": "xcit_nano_12_p8", "embed_dim": 96, "depth": 6, "out_strides": None,
                                "global_blocks": []},
                     "decoder": {"hidden_dim": 64, "stem_skips": False, "refine_channels": 0, "semantic_classes": 0}},
           "loss": {"semantic_weight": 0.0}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    cfg = load_run_config(tmp_path)
    assert cfg.model.image_size == 96 and cfg.model.decoder.align_corners is True
    assert cfg.model.loss.deep_supervision_weight == 0.0
    assert (cfg.model.vision.embed_dim, cfg.model.vision.depth) == (96, 6)
    assert load_run_config(tmp_path, ["train.lr=1e-4"]).train.lr == pytest.approx(1e-4)
    old["loss"]["deep_supervision_weight"] = 0.4
    old["model"]["decoder"]["align_corners"] = False
    path.write_text(yaml.safe_dump(old))
    cfg = load_run_config(path)
    assert cfg.model.loss.deep_supervision_weight == 0.4 and cfg.model.decoder.align_corners is False
    # a switched-on option that no longer exists cannot be rebuilt: one clear error
    old["model"]["decoder"]["refine_channels"] = 8
    path.write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="refine_channels=8: this option was removed"):
        load_run_config(path)
    # saved today: versioned, read back as saved
    load_config().save(path)
    assert yaml.safe_load(path.read_text())["config_version"] == CONFIG_VERSION
    assert load_run_config(path).to_dict() == load_config().to_dict()
    # a file the user writes without a version is the current format (no LAVT defaults sneak in)
    path.write_text("model:\n  decoder:\n    hidden_dim: 32\n")
    assert load_config(path).model.decoder.align_corners is False
    path.write_text(f"config_version: {CONFIG_VERSION + 1}\n")
    with pytest.raises(ConfigError, match="newer than this refseg"):
        load_run_config(path)


def test_removed_crossvit_block_still_loads_at_its_default(tmp_path):
    """model.crossvit.block went with config version 3 (vit measured no gain): a version-2 checkpoint that
    kept xca, or whose branch was off, loads; one that trained the vit blocks is refused in one line."""
    import yaml

    from refseg.config import load_run_config

    saved = load_config().to_dict()
    saved.pop("config_version")
    saved["model"]["crossvit"]["block"] = "xca"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"config_version": 2, **saved}))
    assert load_run_config(path).to_dict() == load_config().to_dict()
    saved["model"]["crossvit"].update(block="vit", enabled=False)
    path.write_text(yaml.safe_dump({"config_version": 2, **saved}))
    assert load_run_config(path).model.crossvit.enabled is False
    saved["model"]["crossvit"]["enabled"] = True
    path.write_text(yaml.safe_dump({"config_version": 2, **saved}))
    with pytest.raises(ConfigError, match="model.crossvit.block='vit': this option was removed"):
        load_run_config(path)
    with pytest.raises(ConfigError, match="unknown config key 'model.crossvit.block'"):
        load_config(overrides=["model.crossvit.block=xca"])
