"""Serviceplatformen's token mode: SAML assertions from KOMBIT's STS (``saml``), the STS client with
its cache per (municipality, entity id) (``sts``), and the signed WS-Security header that carries
a token on a SOAP call (``wssecurity``). Used by the outgoing SF1590_B_01 client and by the inbound
SF1590_B_01A service; imports only ``core``."""
