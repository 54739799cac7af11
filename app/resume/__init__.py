"""Resume from step: eligibility, plans, and the permission-checked resume itself."""
