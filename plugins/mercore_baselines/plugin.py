"""placeholder: filled in by its owner."""
from mercore.hookspecs import hookimpl


@hookimpl
def register_components(register):
    pass
