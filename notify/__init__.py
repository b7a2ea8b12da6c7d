"""Delivery of side effects (ARCHITECTURE rule 4): the outbox and its dispatcher.

`notify.outbox.enqueue` is called inside the transaction that stores the results that
cause a callback; `mesflow run notify` (`notify.dispatcher`) delivers what was enqueued,
signed as Standard Webhooks says (`notify.webhooks`).
"""
