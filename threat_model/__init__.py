"""The threats lessee defends against, as data, each tied to its mitigation and its tests."""
