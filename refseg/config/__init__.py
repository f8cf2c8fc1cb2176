"""Typed configuration: YAML -> nested dataclasses, with dotted ``key=value`` overrides.

Two levels, as in Hugging Face's ``configuration_*`` files:

- ``ModelConfig`` (``model.*``): the architecture and its preprocessing (input size, tokens) —
  everything a checkpoint needs to rebuild the model. It alone decides which modules exist.
- ``RunConfig`` (the whole file): ``model`` plus how to train and score it — ``data``, ``train``,
  ``eval``. The losses are part of the model (``model.loss``): the model computes them when given labels.

Every field has a type (choices as ``Literal``), a default and a help string; this schema is the one
source of truth for keys (``train.py --help-config`` prints it, ``configs/default.yaml`` must equal
it, tests check both). Values are validated when a config is loaded, so a typo fails at once with a
``ConfigError`` naming the key (and the nearest valid key).

A YAML file may build on another: ``base: xcit_s12_p16_480.yaml`` (a path relative to the file) is
loaded first and the file's own keys are merged over it.

Saved configs (run directories, checkpoints) carry ``config_version``. Files saved before versions
existed are version 1 and are brought to the current version by the explicit steps in ``MIGRATIONS``,
so an old checkpoint rebuilds exactly the model it was trained as.

The schema (the dataclasses) is ``refseg.config.schema``; reading, overrides, migrations and the
generated help are ``refseg.config.loading``. Everything public is importable from ``refseg.config``.
"""
from __future__ import annotations

from ..errors import ConfigError
from .loading import (MIGRATIONS, RENAMED_KEYS, FieldInfo, all_keys, apply_overrides, config_fields, config_from_dict,
                      format_config_help, format_config_reference, load_config, load_run_config, migrate, type_name)
from .schema import (CONFIG_VERSION, SWIN_NAME, Config, CrossViTConfig, DataConfig, DecoderConfig, EvalConfig,
                     FusionConfig, LossConfig, ModelConfig, RefShapesConfig, RunConfig, TextConfig, TrainConfig,
                     VisionConfig, option, section)

__all__ = ["CONFIG_VERSION", "MIGRATIONS", "RENAMED_KEYS", "SWIN_NAME", "Config", "ConfigError", "CrossViTConfig",
           "DataConfig", "DecoderConfig", "EvalConfig", "FieldInfo", "FusionConfig", "LossConfig", "ModelConfig",
           "RefShapesConfig", "RunConfig", "TextConfig", "TrainConfig", "VisionConfig", "all_keys", "apply_overrides",
           "config_fields", "config_from_dict", "format_config_help", "format_config_reference", "load_config",
           "load_run_config", "migrate", "option", "section", "type_name"]
