"""Producing: the SNS producer, batching and deferred publish."""
