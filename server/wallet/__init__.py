"""Wallets: balances and simulated top-ups."""
