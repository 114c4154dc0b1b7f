"""Serviceplatformen's token mode: SAML assertions from KOMBIT's STS (``saml``), the STS client with
its cache per (municipality, entity id) (``sts``), and the signed WS-Security header that carries
a token on a SOAP call (``wssecurity``). Used by the outgoing SF1590_B_01 client and by the inbound
SF1590_B_01A service; imports only ``core``."""

import logging

# signxml logs every string it canonicalises at DEBUG: whole assertions, certificates and message
# bodies (CPR numbers). Its loggers stay at INFO wherever tokens are used, so none of it reaches a
# log, whatever level the rest of the process logs at.
logging.getLogger("signxml").setLevel(logging.INFO)
