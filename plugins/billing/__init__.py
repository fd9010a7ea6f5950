"""Billing: plans and credit packs paid in KWD through MyFatoorah, each paid order credited exactly once.

Not a plugin yet. What is here does not depend on the plugin contract: the catalogue of products
(`products.py`), integer fils at the boundaries (`money.py`), the payment provider's interface
(`gateway_client.py`), its MyFatoorah v2 implementation (`myfatoorah.py`) and webhook verification
(`webhooks.py`).
"""
