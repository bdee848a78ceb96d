"""Subscribers: the list as the editor keeps it (CSV import and export, add, remove,
list) and the signup that adds readers through the web (double opt-in and its emails)."""
