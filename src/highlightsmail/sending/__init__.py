"""Sending: an issue to the list through the send ledger. `dispatch` (the test send and
`send`: a plan, then its run), `plan` (the checks and what a send would do), `loop` (the
send loop: claim, hand out, record), `lock` (who may send at once), `events` (what a
send tells its caller), `outcome` (what it returns) and `status`; sending later:
`schedule` (`send --at`, `--cancel`), `runner` (`run-due`, and the runner `serve` keeps),
`limits` (the sending limits as the loop's gate), `provider` (SendGrid holds it) and
`when` (a schedule in the editor's words)."""
