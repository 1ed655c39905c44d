"""mercore's dataset readers and the synthetic generator, registered like any third-party plugin."""

from mercore.hookspecs import hookimpl


@hookimpl
def register_components(register):
    # Imported here, not at module level, so that listing plugins stays cheap and a broken reader cannot
    # break the import of this module (the loader records the failure per plugin).
    from mercore_data.jsonl import JsonlDataset
    from mercore_data.meld_csv import MeldCsvDataset
    from mercore_data.pickles import IemocapPickleDataset, MeldPickleDataset
    from mercore_data.synthetic import SyntheticDataset

    register("dataset", "jsonl", JsonlDataset)
    register("dataset", "iemocap_pickle", IemocapPickleDataset)
    register("dataset", "meld_pickle", MeldPickleDataset)
    register("dataset", "meld_csv", MeldCsvDataset)
    register("dataset", "synthetic", SyntheticDataset)
