"""Mail: a RenderedIssue and one recipient into a message (headers, MIME); the batch
builder (`batches`), the backends that deliver messages, and the pool the senders keep
them in."""
