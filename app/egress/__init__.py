"""Egress policy for every outbound call a tenant's workflow makes (DESIGN §9.1)."""
