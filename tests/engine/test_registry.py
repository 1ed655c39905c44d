import attrs
import pytest

from mercore.errors import RegistryError
from mercore.registry import LOCAL_PROVIDER, Registry


class Thing:
    """A thing.

    More text."""

    @attrs.define
    class Config:
        size: int = 3

    def __init__(self, config, **ctx):
        self.config, self.ctx = config, ctx


def test_duplicate_name_is_refused_naming_both_providers():
    r = Registry()
    r.add("encoder", "gru", Thing, plugin="first_pkg")
    with pytest.raises(RegistryError) as e:
        r.add("encoder", "gru", Thing, plugin="second_pkg")
    assert "first_pkg" in str(e.value) and "second_pkg" in str(e.value)


def test_unknown_name_suggests_close_matches_and_lists_installed():
    r = Registry()
    r.add("encoder", "transformer", Thing, plugin="p")
    r.add("encoder", "bigru", Thing, plugin="p")
    with pytest.raises(RegistryError) as e:
        r.get("encoder", "transfomer")
    msg = str(e.value)
    assert "did you mean 'transformer'" in msg and "bigru" in msg and "transformer" in msg


def test_name_of_another_kind_is_pointed_out():
    r = Registry()
    r.add("head", "mlp", Thing, plugin="p")
    with pytest.raises(RegistryError, match="exists as a head"):
        r.get("encoder", "mlp")


def test_unknown_kind_is_refused():
    r = Registry()
    with pytest.raises(RegistryError, match="did you mean 'router'"):
        r.add("routr", "x", Thing, plugin="p")


def test_module_attr_escape_hatch_resolves_local_code():
    r = Registry()
    spec = r.get("encoder", "test_registry:Thing")
    assert spec.plugin == LOCAL_PROVIDER and spec.config_cls is Thing.Config
    built = spec.factory(spec.config_cls(size=5), dim=2)
    assert built.config.size == 5 and built.ctx == {"dim": 2}
    with pytest.raises(RegistryError, match="cannot import module"):
        r.get("encoder", "no_such_module_xyz:Thing")
    with pytest.raises(RegistryError, match="has no attribute"):
        r.get("encoder", "test_registry:Nothing")


def test_doc_is_the_first_paragraph():
    r = Registry()
    assert r.add("encoder", "t", Thing, plugin="p").doc == "A thing."


def test_first_party_plugins_register_through_entry_points(registry):
    from mercore.plugins import get_plugins

    names = {p.name for p in get_plugins().plugins}
    assert {"core", "data", "summer", "baselines"} <= names
    assert registry.get("optimizer", "adamw").plugin == "core"
