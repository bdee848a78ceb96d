"""Feedback: what comes back after a send: delivery events (SendGrid's webhook, bounce
mail), the report, and the check of the webhook's signature."""
