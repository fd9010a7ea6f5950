"""WhatsApp notifications (issue 18), in Arabic and English.

Built so far, independent of the plugin contract that is still being reworked: the senders
(`senders.py`, the per-code policy in `policy.py`, their environment in `provider.py`) and the message
templates (`templates.py` with `templates/{event}.{ar,en}.txt`, formatting in `formats.py`). The outbox,
the event consumers and the routes come once typed durable events, services and inputs have landed.
"""
