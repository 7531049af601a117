"""Accounts: sign-up, login, token rotation and logout."""
