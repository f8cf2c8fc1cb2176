from pathlib import Path

import pytest

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
    for key in ["data.name", "data.root", "data.split_by", "data.image_size", "model.vision.arch",
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
    p.write_text("data:\n  image_sise: 100\n")
    with pytest.raises(ConfigError, match="data.image_size"):
        load_config(p)
    p.write_text("train:\n  lr: [1, 2]\n")
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_default_yaml_is_the_embedded_default():
    """configs/default.yaml documents the embedded default: they must not drift apart."""
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


def test_naming_a_variant_means_its_own_shape(tmp_path):
    """The default slims xcit_nano_12_p8; naming another variant must not inherit that slimming."""
    default = load_config()
    assert (default.model.vision.embed_dim, default.model.vision.depth) == (96, 6)
    cfg = load_config(overrides=["model.vision.name=xcit_small_12_p16"])
    assert cfg.model.vision.embed_dim is None and cfg.model.vision.depth is None
    cfg = load_config(overrides=["model.vision.name=xcit_small_12_p16", "model.vision.depth=8"])
    assert cfg.model.vision.depth == 8 and cfg.model.vision.embed_dim is None
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  vision:\n    name: xcit_medium_24_p8\n")
    cfg = load_config(p)
    assert cfg.model.vision.embed_dim is None and cfg.model.vision.depth is None
    for f in ["xcit_s12_p16_480.yaml", "xcit_m24_p8_480.yaml", "refcoco.yaml"]:
        assert load_config(REPO / "configs" / f).model.vision.embed_dim is None


@pytest.mark.parametrize("override", ["model.vision.global_blocks=[1]", "model.vision.out_strides=[4,8,8,8]"])
def test_columnar_only_options_rejected_for_hierarchical(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(None, ["model.vision.arch=xcit_hierarchical", override])


def test_saved_configs_keep_the_behaviour_they_were_trained_with(tmp_path):
    """A run saved before model.decoder.align_corners existed was trained with LAVT's True; a user's
    YAML without the key gets today's default (False)."""
    import yaml

    from refseg.config import load_run_config

    cfg_path = tmp_path / "config.yaml"
    load_config().save(cfg_path)
    data = yaml.safe_load(cfg_path.read_text())
    assert data["model"]["decoder"]["align_corners"] is False
    del data["model"]["decoder"]["align_corners"]
    cfg_path.write_text(yaml.safe_dump(data))
    assert load_config(cfg_path).model.decoder.align_corners is False
    assert load_run_config(cfg_path).model.decoder.align_corners is True
    assert load_run_config(tmp_path, ["train.lr=1e-4"]).model.decoder.align_corners is True  # a run directory
    load_config().save(cfg_path)  # saved with the key: kept as saved
    assert load_run_config(cfg_path).model.decoder.align_corners is False
    # deep supervision came later still: a run saved without the key has no heads to load
    data = yaml.safe_load(cfg_path.read_text())
    assert data["loss"]["deep_supervision_weight"] == 0.4
    del data["loss"]["deep_supervision_weight"]
    cfg_path.write_text(yaml.safe_dump(data))
    assert load_config(cfg_path).loss.deep_supervision_weight == 0.4
    assert load_run_config(cfg_path).loss.deep_supervision_weight == 0.0
