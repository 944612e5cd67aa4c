"""Notifications: audit events announced to webhooks and Slack, through a durable outbox.

* :mod:`~jitgate.notify.kinds` — the notification types and subscription patterns;
* :mod:`~jitgate.notify.router` — audit events to outbox rows, in the same transaction;
* :mod:`~jitgate.notify.messages` — the webhook body and the Slack Block Kit messages;
* :mod:`~jitgate.notify.signing` — the ``X-Jitgate-Signature`` scheme and Slack's;
* :mod:`~jitgate.notify.delivery` — the worker: claim, send, retry with back-off, dead letters;
* :mod:`~jitgate.notify.slack` — Slack's interactive Approve and Deny buttons;
* :mod:`~jitgate.notify.admin` — listing notifications and retrying dead ones.

This package imports nothing at start-up, so that :mod:`jitgate.config` can use
:mod:`~jitgate.notify.kinds` without a cycle.
"""
