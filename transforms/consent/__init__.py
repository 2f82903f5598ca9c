"""Consent and removal: page-level opt-outs, TDMRep, removal lists and their audit rows."""
