"""Sending: an issue to the list through the send ledger: the test send, the send loop,
its lock and the status of a dispatch."""
