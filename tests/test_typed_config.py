from dataclasses import dataclass, field

import pytest

from pipeline import extract_config, typed_config


@dataclass(frozen=True)
class Inner:
    size: int = 4
    rate: float = 0.5
    name: str | None = None


@dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()
    flag: bool = False
    extras: dict = field(default_factory=dict)


def test_yaml_then_fields_then_sets_with_types_read_from_the_dataclass(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner: {size: 8}\nextras: {a: {x: 1}}\n")
    config = typed_config.load(Outer(), str(path), {"inner.rate": "2", "flag": "yes", "extras.a.y": "2",
                                                   "inner.name": "none"}, flag=False)
    assert config == Outer(Inner(8, 2.0, None), True, {"a": {"x": 1, "y": "2"}})


@pytest.mark.parametrize("sets, message", [
    ({"inner.sise": "1"}, "unknown setting(s) --set.inner.sise; --set.inner has: size, rate, name"),
    ({"inner.size": "many"}, "--set.inner.size: cannot read 'many' as int"),
    ({"flag": "maybe"}, "cannot read 'maybe' as bool"),
])
def test_bad_settings_are_named(sets, message):
    with pytest.raises(ValueError) as err:
        typed_config.load(Outer(), None, sets)
    assert message in str(err.value)


def test_set_flags_parse_and_extraction_config_checks_models():
    assert typed_config.parse_sets(["a.b=1", "c=x=y"]) == {"a.b": "1", "c": "x=y"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        typed_config.parse_sets(["novalue"])
    with pytest.raises(ValueError, match="mllm.nope"):
        extract_config.load(None, {"models.mllm.nope": "1"})
    config = extract_config.load(None, {"stages.clip.num_gpus": "0.5", "models.diffusion.steps": "1"})
    assert config.stages.clip.num_gpus == 0.5 and config.resolved_models().diffusion.steps == 1
