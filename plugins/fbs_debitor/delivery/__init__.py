"""Claims handed to the debtor system exactly once: the Serviceplatformen SOAP client, the
ledger's outbox (recorded, sent, answered), staff tasks for rejections and long delays (M1), and
the send-rate ceiling.
"""
