"""Policies: how a model turns a batch into what its objective needs."""
